"""One error family. Every message says what went wrong, where, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


class FlotillaError(Exception):
    """Base of every error Flotilla raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file: where (field path, line) and what is allowed."""

    location: str
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        field = f" {self.location}:" if self.location else ""
        return f"{where}:{field} {self.message}"


class SpecError(FlotillaError):
    """A request or workflow spec is invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = len(problems)
        lines = [f"{source} is not valid ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  {p.render(source)}" for p in problems]
        super().__init__("\n".join(lines))


class RunError(FlotillaError):
    """A run could not start or continue (bad repository, unknown run key, store unreachable)."""


class ApiUnreachable(RunError):
    """The Prefect API could not be reached (a server down, a temporary server that would not
    start); the run is saved and `flotilla resume` carries it on."""

    exit_code = 4


class TargetError(RunError):
    """The target repository or its base branch is not usable: bad input, found before the run."""

    exit_code = 2


class GitError(FlotillaError):
    """A git command failed; the message carries the command and git's own words."""


class AgentError(FlotillaError):
    """An agent could not be started (executable missing, bad template)."""


class RunLocked(RunError):
    """Another live process holds the run's lock: one writer per run key."""

    exit_code = 6


class ForeignCommits(GitError):
    """A branch in the target holds commits this run did not make; it is not overwritten."""

    exit_code = 5


class StoreUnavailable(RunError):
    """The store stayed unreachable through every retry; nothing was lost, resume later."""


def clip(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, so no message ever echoes megabytes."""
    return clip_text(repr(value), limit)


def clip_text(text: str, limit: int = 80) -> str:
    """`text` (a list of names, say) cut to `limit` characters, without quotes."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
