"""The project's error types. No imports on purpose: any module may raise these."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2.

    Subclasses may set another `exit_code` (e.g. a diverged training run, a peer that
    stopped answering); main_guard exits with it.
    """

    exit_code = 2


class ArchError(ValueError):
    """An architecture that does not belong to the search space (one-line message)."""


class ConfigError(ValueError):
    """A space config that cannot be built (one-line message)."""
