"""The Dockerfile and the files `docker build` sends as its context (the repo filtered by .dockerignore).

Docker's rules as far as this repo's .dockerignore uses them: one pattern a line, `#` comments, `*` and `?`
within a path segment, `**` across segments, a leading `!` re-includes; a pattern matches a path or any of
its parent directories, and the last pattern that matches decides.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import REPO


def _regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_rules(root: Path = REPO) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line of `root`/.dockerignore."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        rules.append((not negated, _regex(pattern.strip("/"))))
    return rules


def is_excluded(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = excludes
    return excluded


# Never part of the context and too big to walk: skipped without looking at the rules.
_NEVER = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "build", "dist"}


def context_files(root: Path = REPO) -> list[str]:
    """Relative paths of the files in the build context (symlinks count as files)."""
    rules = dockerignore_rules(root)
    files = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not (directory == str(root) and d in _NEVER))
        for name in names:
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if not is_excluded(relative, rules):
                files.append(relative)
    return sorted(files)


def copy_context(destination: Path, root: Path = REPO) -> Path:
    """Copy the build context of `root` to `destination` (as Docker would send it) and return it."""
    for relative in context_files(root):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target, follow_symlinks=False)
    return destination


# --------------------------------------------------------------------------------------------------
# The Dockerfile, as instructions per stage


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the line, continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (ENTRYPOINT ["pipeline"]), else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            parts = re.split(r"(?:^|\s)CMD\s", text, maxsplit=1)
            text = parts[1].strip() if len(parts) == 2 else ""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return [str(v) for v in value] if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV names and values of this stage (the KEY=VALUE form)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, sep, value = token.partition("=")
                if sep:
                    values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and stage ARGs, with their defaults
    stages: list[Stage]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path = REPO / "Dockerfile") -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip())
        if instruction.keyword == "ARG":
            arg, _, default = instruction.args.partition("=")
            args.setdefault(arg, default)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            stage_name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=stage_name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args=args, stages=stages)
