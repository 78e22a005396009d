"""User-facing errors.

A :class:`MedliteError` is a problem with what the user gave us (a file, a config key, a
value). The CLI prints its message on one line and exits with code 2, without a traceback.
Anything else that escapes is a bug in medlite and keeps its traceback.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (``\\n``,
    ``\\x1b``, ``\\u202e``), so a message quoting a hostile file stays one plain line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class MedliteError(Exception):
    """A problem with user input, reported on one line: the message and each of
    ``problems`` are passed through :func:`one_line` (a quoted cell may hold a newline)."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(one_line(str(message)))
        self.problems = [one_line(str(problem)) for problem in problems or []]


class ConfigError(MedliteError):
    """A config key is unknown or its value is invalid; the message names the dotted key."""


class DataError(MedliteError):
    """A data file or manifest row is unusable; the message names the file and field."""


class RunDirError(MedliteError):
    """A run directory exists and neither --resume nor --overwrite was given, is not a run,
    or is in use by another medlite process (its ``.lock``)."""


class WriteError(RunDirError):
    """An output folder cannot be written: the disk is full, or the folder is read-only or
    not ours to write. Nothing half-written is left; it stops a whole run (every other fit
    would fail the same way), and the message names the folder and the file."""


class WeightsNotFoundError(MedliteError):
    """Pretrained weights were asked for but are not available offline."""
