"""Exceptions mednns raises on purpose.

Every error a user can cause derives from :class:`MednnsError`. The CLI prints
these as one message (plus a hint) without a traceback and exits with
``exit_code``. Errors of the machine or of the user's files (:func:`environment_error`) are
reported the same way; anything else is a bug and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass


class MednnsError(Exception):
    """Base class of errors caused by input, configuration or environment."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(MednnsError):
    """The user asked for something that cannot exist (exit code 2)."""

    exit_code = 2


class UnknownComponentError(UsageError):
    """A component name that no plugin registered."""


class DuplicateComponentError(MednnsError):
    """Two plugins registered the same component name."""


class PluginLoadError(MednnsError):
    """A plugin failed to load (raised only in strict mode)."""


class DatasetError(MednnsError):
    """A dataset file or folder that cannot be used as it is (the user's input: exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration, located by its dotted key path."""

    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.path or '<config>'}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ConfigError(UsageError):
    """One or more configuration problems, each with its key path."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue, source: str | None = None):
        self.issues = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.issues)
        head = f"{count} configuration error{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([head, *(f"  {issue}" for issue in self.issues)]))


def environment_error(exc: BaseException) -> UsageError | None:
    """The user error an exception from the environment stands for (a path that is not what it
    should be, a full disk, a file in another encoding, input nested too deeply, no memory left, a
    damaged database), or ``None`` when it comes from mednns's own code."""
    import sqlite3

    if isinstance(exc, UnicodeDecodeError):
        return UsageError(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          hint="save text files (configs, labels, JSON) as UTF-8")
    if isinstance(exc, OSError) and (exc.filename is not None or exc.strerror):
        where = "" if exc.filename is None else f": {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return UsageError(f"{exc.strerror or type(exc).__name__}{where}",
                          hint="check that the path exists and is what is expected there (a folder or a file), "
                               "that it is writable, and that the disk has space")
    if isinstance(exc, RecursionError):
        return UsageError("the input is nested too deeply to read", hint="flatten the nesting of the YAML or JSON")
    if isinstance(exc, MemoryError):
        return UsageError("out of memory", hint="lower batch sizes, image counts or samples, or use a larger machine")
    if isinstance(exc, sqlite3.DatabaseError):
        return UsageError(f"a SQLite database is damaged or not a database ({exc})",
                          hint="a zoo store: build it again, or restore it from a copy")
    return None
