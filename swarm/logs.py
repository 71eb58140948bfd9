"""Logging set-up shared by every process: quiet by default, structured when not a TTY.

Quiet means WARNING, except the gateway's access log (`swarmgate.access`, one line per HTTP
request) which shows at INFO; an explicit level (`--log-level`, `SWARMGATE_LOG_LEVEL`) applies
to every logger, the access log included.
"""

from __future__ import annotations

import json
import logging
import os
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
        return json.dumps(data, default=str)


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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET if explicit else logging.INFO)
    logging.Formatter.converter = time.gmtime
    quiet_third_party_logs()
