"""Named retry presets and deployment profiles from the seeds, as plain data.

The config loader layers `preset_layer(preset, profile)` under the file and env values: a profile sets a whole
deployment's retry, circuit-breaker and queue groups; a preset then replaces the retry group's backoff shape.
Keys are exactly the field names of RetryPolicy, BreakerPolicy and QueuePolicy, so every layer validates
with those models (max_attempts from seed 003 counts the first attempt: max_retries = max_attempts - 1;
seconds become milliseconds; exponential_base becomes backoff_multiplier).

Neither presets nor profiles set `jitter_factor` unless a seed gives a number: seed 003's presets only say
"jitter=True", which every policy does (default 0.1), so a preset does not undo a profile's jitter.
"""

from __future__ import annotations

import copy

__all__ = ["DEPLOYMENT_PROFILES", "GROUPS", "RETRY_PRESETS", "known_presets", "known_profiles", "preset_layer"]

GROUPS: tuple[str, ...] = ("retry", "circuit_breaker", "queue")

_GIB = 1024**3
_MIB = 1024**2

# Seed 003 "Preset Retry Configurations" (CONSERVATIVE_CONFIG, AGGRESSIVE_CONFIG, PATIENT_CONFIG).
RETRY_PRESETS: dict[str, dict[str, object]] = {
    # "Database operations, critical API calls": max_attempts=3, initial_delay=1.0, max_delay=16.0, base 2.0
    "conservative": {
        "max_retries": 2,
        "initial_backoff_ms": 1_000,
        "max_backoff_ms": 16_000,
        "backoff_strategy": "exponential",
        "backoff_multiplier": 2.0,
    },
    # "Fast-recovering services": max_attempts=5, initial_delay=0.5, max_delay=8.0, exponential_base=1.5
    "aggressive": {
        "max_retries": 4,
        "initial_backoff_ms": 500,
        "max_backoff_ms": 8_000,
        "backoff_strategy": "exponential",
        "backoff_multiplier": 1.5,
    },
    # "Background processing, high variability": max_attempts=4, initial_delay=2.0, max_delay=60.0, base 2.5
    "patient": {
        "max_retries": 3,
        "initial_backoff_ms": 2_000,
        "max_backoff_ms": 60_000,
        "backoff_strategy": "exponential",
        "backoff_multiplier": 2.5,
    },
}

# Seed 000 "Deployment Scenarios" (the TSDB_* lines; where the seed gives LOKI_* values too they are noted).
# A setting the scenario does not mention is left out, so the built-in default (or the file/env) applies.
DEPLOYMENT_PROFILES: dict[str, dict[str, dict[str, object]]] = {
    # 1. Satellite Communication: high latency (500-800 ms), periodic dropouts, limited bandwidth.
    "satcom": {
        "retry": {
            "timeout_ms": 300_000,  # seed 000: TSDB_TIMEOUT_MS=300000 (5 minutes; LOKI the same)
            "max_retries": 5,  # seed 000: TSDB_MAX_RETRIES=5
            "initial_backoff_ms": 5_000,  # seed 000: TSDB_INITIAL_BACKOFF_MS=5000
            "max_backoff_ms": 900_000,  # seed 000: TSDB_MAX_BACKOFF_MS=900000 (15 minutes)
            "jitter_factor": 0.3,  # seed 001 "SATCOM-Optimized Settings": SINK_DEFAULT_JITTER_FACTOR=0.3
        },
        "circuit_breaker": {
            "failure_threshold": 3,  # seed 000: TSDB_FAILURE_THRESHOLD=3
            "open_duration_sec": 1_800.0,  # seed 000: TSDB_OPEN_DURATION_SEC=1800 (30 minutes)
            "half_open_max_inflight": 2,  # seed 001 "SATCOM-Optimized Settings": SINK_DEFAULT_HALF_OPEN_MAX_INFLIGHT=2
        },
        "queue": {
            "enabled": True,  # seed 000: TSDB_QUEUE_ENABLED=true ("Essential")
            "max_bytes": 2 * _GIB,  # seed 000: TSDB_QUEUE_MAX_BYTES=2147483648 (2 GiB)
        },
    },
    # 2. At-Sea Operations: complete connectivity loss during storms, varying quality. No timeout or
    # failure threshold in the seed: those keep their defaults.
    "at-sea": {
        "retry": {
            "max_retries": 3,  # seed 000: TSDB_MAX_RETRIES=3
            "initial_backoff_ms": 10_000,  # seed 000: TSDB_INITIAL_BACKOFF_MS=10000
            "max_backoff_ms": 600_000,  # seed 000: TSDB_MAX_BACKOFF_MS=600000 (10 minutes)
        },
        "circuit_breaker": {
            "open_duration_sec": 3_600.0,  # seed 000: TSDB_OPEN_DURATION_SEC=3600 (LOKI the same)
        },
        "queue": {
            "enabled": True,  # seed 000: TSDB_QUEUE_ENABLED=true, LOKI_QUEUE_ENABLED=true
            # seed 000: TSDB_QUEUE_MAX_BYTES=5368709120 (5 GiB). The seed gives Loki 1 GiB
            # (LOKI_QUEUE_MAX_BYTES=1073741824); a profile is per deployment, so set LOKI_QUEUE_MAX_BYTES for that.
            "max_bytes": 5 * _GIB,
        },
    },
    # 3. Remote Edge Sites: intermittent connectivity, power constraints, limited storage.
    "remote-edge": {
        "retry": {
            "max_retries": 3,  # seed 000: TSDB_MAX_RETRIES=3
            "initial_backoff_ms": 2_000,  # seed 000: TSDB_INITIAL_BACKOFF_MS=2000
            "max_backoff_ms": 60_000,  # seed 000: TSDB_MAX_BACKOFF_MS=60000 (1 minute)
        },
        "circuit_breaker": {
            "failure_threshold": 5,  # seed 000: TSDB_FAILURE_THRESHOLD=5
            "open_duration_sec": 120.0,  # seed 000: TSDB_OPEN_DURATION_SEC=120 (2 minutes)
        },
        "queue": {
            # seed 000: TSDB_QUEUE_ENABLED=true (the seed disables Loki's queue: LOKI_QUEUE_ENABLED=false,
            # a per-sink choice left to the sink's own settings)
            "enabled": True,
            "max_bytes": 512 * _MIB,  # seed 000: TSDB_QUEUE_MAX_BYTES=536870912 (512 MiB)
        },
    },
    # 4. Multi-Cloud Deployments: cross-region latency, cloud provider outages. No retry counts/backoffs or
    # queue size in the seed.
    "multi-cloud": {
        "retry": {
            "timeout_ms": 60_000,  # seed 000: TSDB_TIMEOUT_MS=60000, LOKI_TIMEOUT_MS=60000
        },
        "circuit_breaker": {
            "failure_threshold": 3,  # seed 000: TSDB_FAILURE_THRESHOLD=3, LOKI_FAILURE_THRESHOLD=3
            "open_duration_sec": 60.0,  # seed 000: TSDB_OPEN_DURATION_SEC=60, LOKI_OPEN_DURATION_SEC=60
        },
        "queue": {
            "enabled": True,  # seed 000: TSDB_QUEUE_ENABLED=true, LOKI_QUEUE_ENABLED=true
        },
    },
}


def known_presets() -> list[str]:
    return sorted(RETRY_PRESETS)


def known_profiles() -> list[str]:
    return sorted(DEPLOYMENT_PROFILES)


def _normalize(name: str | None) -> str | None:
    """Case-insensitive, '_' and '-' alike (env: AT_SEA), blank = not set."""
    if name is None:
        return None
    key = name.strip().lower().replace("_", "-")
    return key or None


def preset_layer(preset: str | None, profile: str | None) -> dict[str, dict[str, object]]:
    """The merged defaults of a deployment profile and a retry preset: group -> field -> value.

    The profile comes first; the preset's values then replace the profile's in the retry group. Always has
    the three groups ("retry", "circuit_breaker", "queue"), possibly empty. Returns a fresh copy.
    Raises ValueError naming an unknown preset or profile and listing the known ones."""
    preset_key = _normalize(preset)
    profile_key = _normalize(profile)
    if profile_key is not None and profile_key not in DEPLOYMENT_PROFILES:
        raise ValueError(f"unknown deployment profile {profile!r}; known profiles: {', '.join(known_profiles())}")
    if preset_key is not None and preset_key not in RETRY_PRESETS:
        raise ValueError(f"unknown retry preset {preset!r}; known presets: {', '.join(known_presets())}")
    layer: dict[str, dict[str, object]] = {group: {} for group in GROUPS}
    if profile_key is not None:
        for group, values in DEPLOYMENT_PROFILES[profile_key].items():
            layer[group].update(copy.deepcopy(values))
    if preset_key is not None:
        layer["retry"].update(copy.deepcopy(RETRY_PRESETS[preset_key]))
    return layer
