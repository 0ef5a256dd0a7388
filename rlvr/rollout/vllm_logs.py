"""vLLM log messages that say nothing a user can act on, each dropped at the one logger that emits it.

Design: a run prints a line per step and start-up messages once; a notice repeated at every
weight load, or one that describes a setting we already made, buries that.  Each drop names its
logger and message text, so any other message of the same logger still gets through.
"""

from __future__ import annotations

import logging


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def drop_message(logger_name: str, text: str) -> None:
    """Install a :class:`DropMessage` for ``text`` on ``logger_name`` once (calling again is a no-op)."""
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, DropMessage) and f.text == text for f in log.filters):
        log.addFilter(DropMessage(text))
