"""Logging set-up shared by every process: quiet by default, structured when not a TTY.

Quiet means WARNING, except the gateway's access log (`swarmgate.access`, one line per HTTP
request) which shows at INFO; an explicit level (`--log-level`, `SWARMGATE_LOG_LEVEL`) applies
to every logger, the access log included.

Records are written by a thread of their own (a `QueueListener`): a logging call on an event
loop costs a queue put, never a write to a stderr pipe that a slow reader may have filled.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import os
import queue
import sys
import time

ACCESS_LOGGER = "swarmgate.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _standard = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._standard:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted before the hand-off (`_Handoff`)
            data["exc"] = record.exc_text
        return json.dumps(data, default=str)


class _Handoff(logging.handlers.QueueHandler):
    """Queues records for the writer thread, their message and traceback rendered here (the
    arguments may change once the call returns); `extra` fields travel with the record."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)  # other handlers still see the original
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    """Write what is queued and stop the writer thread (at exit, or before a new set-up)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        direct = _listener.handlers[0]
        root = logging.getLogger()  # records logged later go straight to the stream
        root.handlers[:] = [direct if isinstance(h, _Handoff) else h for h in root.handlers]
        _listener = None


def quiet_third_party_logs() -> None:
    """Silence the chatty libraries (transformers, bitsandbytes, libp2p) below errors."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass
    for name in ("bitsandbytes", "libp2p", "multiaddr", "httpx", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR)


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once: JSON when stderr is not a TTY, plain lines otherwise."""
    explicit = level or os.environ.get("SWARMGATE_LOG_LEVEL")
    level_name = (explicit or "WARNING").upper()
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    global _listener
    _stop_listener()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    atexit.unregister(_stop_listener)  # once, however often the set-up runs
    atexit.register(_stop_listener)
    root = logging.getLogger()
    root.handlers[:] = [_Handoff(records)]
    root.setLevel(level_name)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET if explicit else logging.INFO)
    logging.Formatter.converter = time.gmtime
    quiet_third_party_logs()
