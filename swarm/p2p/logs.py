"""Taming py-libp2p's logging.

libp2p logs noisy warnings under the "libp2p" logger with no handler and propagation off, so
Python's last-resort handler prints them to stderr. We raise that logger to ERROR (WARNING when
verbose), and forward what passes to our own logger `swarm.p2p.libp2p` at DEBUG level, so
nothing reaches the terminal unless the application enables debug logging for us.
"""

from __future__ import annotations

import logging

LIBP2P_LOGGER = "libp2p"
FORWARD_LOGGER = "swarm.p2p.libp2p"


class _Forward(logging.Handler):
    """Re-emits libp2p records on our logger, demoted to DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(FORWARD_LOGGER)
        if target.isEnabledFor(logging.DEBUG):
            target.debug("[%s] %s", record.name, record.getMessage())


def tame_libp2p_logging(verbose: bool = False) -> None:
    """Idempotent; call before starting a node (P2PNode.start calls it)."""
    lg = logging.getLogger(LIBP2P_LOGGER)
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.addHandler(_Forward())
    lg.setLevel(logging.WARNING if verbose else logging.ERROR)
    lg.propagate = False
