"""The daemon's own log (config ``log``): text or JSON lines, on stderr or in a file.

The binder sets it up (it opens the file: a worker cannot); forked workers keep the same
handler and file descriptor and only change the process label of their lines. Each record is
written with one ``write`` to a file opened for appending, so lines of several processes never
interleave. ``log`` settings apply at start (and so at an upgrade, which starts the binder
anew), not at a reload.

Under systemd with the output going to the journal (``$JOURNAL_STREAM`` names stderr's device
and inode, systemd.exec(5)), every line starts with its syslog priority, ``<3>`` for an error,
``<4>`` a warning, ``<6>`` info, ``<7>`` debug (sd-daemon(3), SyslogLevelPrefix=), and carries
no timestamp: the journal stamps every entry itself. A log file is reopened by :func:`reopen`
(SIGUSR1, a reload: after logrotate renamed it); a worker gets the new file from the binder
and puts it under the same descriptor number (:func:`adopt`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import sys
import time

from nsproxy import schema

TEXT_FORMAT = "%(asctime)s {label} %(levelname)s %(message)s"
JOURNAL_FORMAT = "{label} %(levelname)s %(message)s"  # the journal adds the time

# syslog(3) priorities of Python's levels (sd-daemon(3): "<N>" line prefixes).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
              logging.DEBUG: 7}  # fmt: skip

_STATE = {"path": None, "format": "text", "journal": False}

UNRAISABLE_LOG_INTERVAL = 10.0  # seconds between two lines about one kind of ignored exception
UNRAISABLE_KINDS = 64  # kinds (exception type and context) tracked; beyond, they share one
_unraisable: dict = {}  # kind -> [when the next line may be written, lines dropped since]


def priority(levelno: int) -> int:
    """The syslog priority of a Python log level (a level between two takes the lower one's)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


def stderr_is_journal() -> bool:
    """Whether stderr is the journal's stream: ``$JOURNAL_STREAM`` ("DEVICE:INODE") equals
    stderr's (systemd.exec(5) says to compare, as the variable is inherited by children whose
    output may go elsewhere)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


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


class JournalFormatter(logging.Formatter):
    """Wraps another formatter: each line of the record gets the record's ``<N>`` prefix (the
    journal reads the priority per line; a traceback's lines keep the record's)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    @property
    def label(self) -> str:
        return getattr(self.inner, "label", "")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def configure(level: str, fmt: str = "text", path: str | None = None) -> None:
    """Log at ``level`` to ``path`` (appended, created 0640) or stderr, as ``fmt`` lines
    (with syslog priorities when stderr is the journal). Raises OSError if the file cannot be
    opened."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = sys.stderr
    if path:
        stream = os.fdopen(open_append(path), "a", buffering=1, encoding="utf-8")
    _STATE.update(path=path, format=fmt, journal=not path and stderr_is_journal())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter("nsproxy"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    sys.unraisablehook = _log_unraisable


def _log_unraisable(unraisable) -> None:
    """``sys.unraisablehook``: an exception Python could not raise, in a call it made from C,
    becomes one log line in the log's format, at most one per UNRAISABLE_LOG_INTERVAL for each
    kind (the count of the others in the next), so a client's flood of one kind hides no
    other. Python's own hook writes a traceback to stderr, outside the log's format, and a
    client can cause one at will: a TLS server name that is not ASCII fails to decode before
    the SNI callback is called (CPython Modules/_ssl.c, _servername_callback; the handshake is
    refused). The object is not shown (that name)."""
    now = time.monotonic()
    kind = (unraisable.exc_type, unraisable.err_msg)
    if kind not in _unraisable and len(_unraisable) >= UNRAISABLE_KINDS:
        kind = None  # a flood of new kinds shares one limit
    state = _unraisable.setdefault(kind, [0.0, 0])
    if now < state[0]:
        state[1] += 1
        return
    dropped, state[0], state[1] = state[1], now + UNRAISABLE_LOG_INTERVAL, 0
    exc = unraisable.exc_value
    logging.getLogger("nsproxy").warning(
        "%s: %s: %.200s%s",
        unraisable.err_msg or "exception ignored",
        type(exc).__name__ if exc is not None else unraisable.exc_type.__name__,
        exc,
        f" ({dropped} more ignored since the last line)" if dropped else "",
    )


#: What a log file (``log.path``, ``access_log``) may be when it exists: config_schema's
#: FilePath says the same to ``nsproxy check``.
LOG_FILE_KINDS = "a regular file or a character device such as /dev/null"


def open_append(path: str) -> int:
    """``path`` opened for appending (created 0640), never waiting: opened non-blocking (a
    FIFO's open would wait for a reader, and a binder stuck there ignores SIGTERM), then
    anything but a regular file or a character device (/dev/null) is refused. The fd is
    blocking again when returned. Raises OSError, whose ``strerror`` says why."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, a unix socket
            raise OSError(errno.ENXIO, f"not {LOG_FILE_KINDS}") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise OSError(errno.EINVAL, f"{schema.file_kind(mode)}, not {LOG_FILE_KINDS}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _formatter(label: str) -> logging.Formatter:
    if _STATE["format"] == "json":
        inner: logging.Formatter = JsonFormatter(label)
    elif _STATE["journal"]:
        inner = logging.Formatter(JOURNAL_FORMAT.format(label=label))
    else:
        inner = logging.Formatter(TEXT_FORMAT.format(label=label))
    return JournalFormatter(inner) if _STATE["journal"] else inner


def relabel(label: str) -> None:
    """A worker's lines: the same handlers, labelled ``label`` (e.g. "nsproxy[worker 0 123]")."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_formatter(label))


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


def file_fd() -> int | None:
    """The descriptor of the log file (None when the log goes to stderr)."""
    if not _STATE["path"]:
        return None
    found = fds()
    return found[0] if found else None


def reopen() -> int | None:
    """Open the log file anew (logrotate renamed it) and put it under the handler's descriptor
    number; returns a descriptor of the new file for the workers (the caller closes it), or
    None when the log goes to stderr. Raises OSError (the old file stays in use)."""
    target = file_fd()
    if target is None:
        return None
    fd = open_append(_STATE["path"])
    try:
        adopt(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def adopt(fd: int) -> None:
    """Write the log to the file open as ``fd`` from now on, under the handler's own
    descriptor number (dup2: the handler's stream object stays as it is). ``fd`` stays open
    (the caller's)."""
    target = file_fd()
    if target is None:
        return
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os.dup2(fd, target, inheritable=False)
