"""User-facing errors.

Every mistake a user can make (a config key, a value out of range, a missing or malformed data
file, a shape that does not fit) raises a subclass of :class:`NtkLabError` whose message is one
sentence naming the culprit and what is allowed. The CLI prints it and exits with status 2,
without a traceback.
"""

from __future__ import annotations


class NtkLabError(Exception):
    """Base class: the message is one complete sentence for the user."""

    exit_code = 2


class ConfigError(NtkLabError):
    """A config key, type or value is not allowed."""


class DataError(NtkLabError):
    """A dataset is unknown, missing, truncated or of the wrong kind."""


class ArchError(NtkLabError):
    """A layer or input shape does not fit the architecture spec."""


class RunDirError(NtkLabError):
    """A run directory conflicts with the requested run."""


class ResourceError(NtkLabError):
    """A run needs more memory or disk than it may use (checked before any work)."""


class DiskFullError(ResourceError):
    """A write failed for lack of disk space; what was stored stays, a rerun resumes."""

    @classmethod
    def at(cls, path: object) -> DiskFullError:
        """The error for a write to ``path`` that found no space left."""
        return cls(
            f"the disk holding {path} is full (no space left to write it); free some space and run "
            "the same command again to resume."
        )
