"""Errors a user can fix. The CLI prints them as one line and exits non-zero; anything
else is a bug and keeps its traceback."""


class UdasegError(Exception):
    """Base class: the message names the file or setting and the fix."""


class DataError(UdasegError):
    """A dataset folder or file that is missing or not in the expected format."""


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


def shorten(text: str, width: int = 120) -> str:
    """The first line of `text`, at most `width` characters, cut at a word boundary and marked with '…'.

    For a foreign library's message quoted inside ours: a line cut mid-word ("If yo") reads as a typo.
    """
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= width:
        return line
    cut = line[:width - 1]
    if " " in cut:  # a single word longer than `width` (a path) is cut where it must be
        cut = cut[:cut.rfind(" ")]
    return cut.rstrip(" ,;:.-(") + "…"


WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def worker_message(message: str) -> str:
    """The message of an error raised in a DataLoader worker, without the wrapper PyTorch adds.

    A worker's exception comes back as the same type with "Caught X in DataLoader worker process N."
    and the worker's whole traceback as its message; the original message is the traceback's last
    line after "module.Class: ". Other messages are returned unchanged.
    """
    if WORKER_TRACEBACK not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and " " not in head else last


class StageFinished(UdasegError):
    """--continue on a stage that has already run to its end: the CLI says so and exits 0, nothing changed."""
