"""The daemon's own log (config ``log``): text or JSON lines, on stderr or in a file.

The binder sets it up (it opens the file: a worker cannot); forked workers keep the same
handler and file descriptor and only change the process label of their lines. Each record is
written with one ``write`` to a file opened for appending, so lines of several processes never
interleave. ``log`` settings apply at start (and so at an upgrade, which starts the binder
anew), not at a reload.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

TEXT_FORMAT = "%(asctime)s {label} %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, process, pid, message."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.label,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)


def configure(level: str, fmt: str = "text", path: str | None = None) -> None:
    """Log at ``level`` to ``path`` (appended, created 0640) or stderr, as ``fmt`` lines.
    Raises OSError if the file cannot be opened."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stream = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
    else:
        stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(fmt, "nsproxy"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def _formatter(fmt: str, label: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(label)
    return logging.Formatter(TEXT_FORMAT.format(label=label))


def relabel(label: str) -> None:
    """A worker's lines: the same handlers, labelled ``label`` (e.g. "nsproxy[worker 0 123]")."""
    for handler in logging.getLogger().handlers:
        json_lines = isinstance(handler.formatter, JsonFormatter)
        handler.setFormatter(_formatter("json" if json_lines else "text", label))


def fds() -> list[int]:
    """The file descriptors the log handlers write to (a forked worker keeps them)."""
    out = []
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        try:
            out.append(stream.fileno())
        except (AttributeError, ValueError, OSError):
            continue
    return out
