"""Errors a user can fix. The CLI prints them as one line and exits non-zero; anything
else is a bug and keeps its traceback."""


class UdasegError(Exception):
    """Base class: the message names the file or setting and the fix."""


class DataError(UdasegError):
    """A dataset folder or file that is missing or not in the expected format."""


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""
