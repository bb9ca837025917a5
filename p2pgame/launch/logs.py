"""What p2pgame says on stderr while it works (progress of a preparation, a peer
restarted, a warning, the error a run ended on), through :mod:`logging`.

Every module logs to its own logger (``logging.getLogger(__name__)``), all under the
``p2pgame`` logger.  :func:`setup_logging` gives that logger one handler, on whatever
``sys.stderr`` is when a line is written (so a test's captured stderr sees it), whose
format is exactly the text these lines always had: the message alone, after
``warning: `` for a warning and ``error: `` for an error.  The command line calls it
once; :func:`p2pgame.launch.run` calls it too, for a caller that never configured
logging, and a second call (or a handler of the caller's own on ``p2pgame``) leaves
things as they are.  What the command line prints as its output (tables, ``results:``)
is not logged; nor is the progress bar.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "p2pgame"
PREFIXES = {logging.WARNING: "warning: ", logging.ERROR: "error: ",
            logging.CRITICAL: "error: "}


class PlainFormatter(logging.Formatter):
    """The message as p2pgame always wrote it: ``warning: ...`` and ``error: ...`` for
    those levels, the bare text otherwise (no time, no logger name)."""

    def format(self, record: logging.LogRecord) -> str:
        return PREFIXES.get(record.levelno, "") + super().format(record)


class StderrHandler(logging.StreamHandler):
    """A stream handler on the ``sys.stderr`` of the moment (not the one it was made
    with: pytest, and any caller redirecting stderr, swap it), flushed after each line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # (StreamHandler's __init__ sets it)
        pass


def setup_logging() -> None:
    """Give the ``p2pgame`` logger its stderr handler (:class:`StderrHandler` with
    :class:`PlainFormatter`) and level INFO, unless it has a handler already: idempotent,
    and a caller's own configuration of ``p2pgame`` is kept."""
    logger = logging.getLogger(LOGGER)
    if logger.handlers:
        return
    handler = StderrHandler()
    handler.setFormatter(PlainFormatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
