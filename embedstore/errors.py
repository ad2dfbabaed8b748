"""One error hierarchy for the library; the CLI maps it to a one-line message and an exit code."""

from __future__ import annotations


class EmbedstoreError(Exception):
    """Base class: a problem the user can act on, reported as one line.

    `details` are further lines (one per bad row, say) printed before the message.
    """

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = list(details or [])


class InputError(EmbedstoreError):
    """Bad user input: a file, row, option or value that cannot be used.

    `parameter` names the library parameter the value was given for (`epochs`, `data`, …) where the
    CLI's option helps the user act on the message; the CLI shows that option in its place
    (cli/app.py, `option_message`). Library messages name the value, never a CLI flag.
    """

    exit_code = 2

    def __init__(self, message: str, details: list[str] | None = None, parameter: str | None = None) -> None:
        super().__init__(message, details)
        self.parameter = parameter


class StoreNotFoundError(EmbedstoreError):
    """No store exists at the given path."""


class SchemaVersionError(EmbedstoreError):
    """The store was written by a schema version this code does not know."""


class StoreLockedError(EmbedstoreError):
    """Another process is writing to the store."""

    exit_code = 3


class StoreBusyError(EmbedstoreError):
    """The database stayed held by a committing writer longer than a reader waits."""

    exit_code = 3


class SqlRefusedError(EmbedstoreError):
    """A query tried to write, read files, attach, install or change settings."""

    exit_code = 4


class SqlError(EmbedstoreError):
    """A query failed (syntax error, unknown column, bad parameter)."""


class IntegrityError(EmbedstoreError):
    """`store verify` found mismatches between the manifest, the files and the tables, or an
    artefact or the database is damaged and refused before use."""

    exit_code = 5


class StoreEnvironmentError(EmbedstoreError):
    """The store's files cannot be read or written: permissions, a read-only file system, a full
    disk, a file where a folder should be. Nothing already stored is lost."""

    exit_code = 6
