# syntax=docker/dockerfile:1
# The pipeline worker image.
#
#   docker build -t pipeline .
#   docker run --read-only --tmpfs /tmp -v pipeline-data:/var/lib/pipeline -e KAFKA_BOOTSTRAP_SERVERS=... pipeline
#   docker run --read-only pipeline topics apply          # any other `pipeline` command
#
# Stage 1 builds the project's wheel and the wheels of all its dependencies (with a compiler, for any
# dependency without a binary wheel); stage 2 installs only those wheels into a virtualenv, from a
# bind mount, so neither the compiler nor the wheel files end up in the final image.
# The root filesystem can be read-only: the only place the worker writes is PIPELINE_DATA_DIR (RocksDB
# tables), a volume. tests/deploy/test_dockerfile.py checks this file; tests/e2e/test_installed_wheel.py
# builds the same wheel from the same build context (.dockerignore) and runs it from an empty directory.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/pipeline/bin:$PATH \
    PIPELINE_DATA_DIR=/var/lib/pipeline \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=6066 \
    LOG_FORMAT=json
RUN groupadd --system --gid ${UID} pipeline \
    && useradd --system --uid ${UID} --gid pipeline --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pipeline \
    && install -d -o ${UID} -g ${UID} -m 0750 /var/lib/pipeline
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/pipeline \
    && /opt/pipeline/bin/pip install --no-cache-dir --no-index --find-links /wheels pipeline \
    && /opt/pipeline/bin/pip uninstall -y -q pip \
    && pipeline --help >/dev/null
USER ${UID}:${UID}
WORKDIR /var/lib/pipeline
VOLUME ["/var/lib/pipeline"]
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["pipeline"]
CMD ["worker"]
