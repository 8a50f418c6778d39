"""Logging set-up: one line per event, its context as fields; JSON lines with LOG_FORMAT=json.

Log calls pass ids, counts, durations and error kinds in `extra`, never report content.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName", "color_message"}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, the extras appended in the order given."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items() if k not in STANDARD_ATTRS and v is not None]
        return f"{line} {' '.join(extras)}" if extras else line


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False))
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a Python warning is a log line too, in the same format
    for noisy in ("azure", "httpx", "google_genai", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
