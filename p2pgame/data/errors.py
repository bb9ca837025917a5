"""The one exception type of :mod:`p2pgame.data`."""

from __future__ import annotations


class DataError(Exception):
    """A data set is missing, corrupt or could not be fetched.

    Messages are single lines that name what was wrong and where (a file, a folder,
    a command), so the CLI can print them as ``error: <message>``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")).strip())
