"""The process's background sequencer: chains audit events every HIE_AUDIT_CHAIN_INTERVAL seconds, so no request
waits for the chain, and an idle process still chains what its last requests left."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from flask import Flask
from sqlalchemy import Engine

from hie.platform.errors import database_unreachable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_started_in: list[int] = []  # the pid whose thread runs: a forked child (gunicorn worker) starts its own
_shards: dict[str, Engine] = {}  # shards this process's requests staged events in


def hand_over(app: Flask, shard: tuple[str, Engine] | None, chain: Callable[..., int]) -> None:
    """Leave this request's events to the sequencer thread of this process, started on the first request after a
    fork; `shard` names the shard whose audit_pending the request wrote."""
    if shard is not None and shard[0] not in _shards:
        _shards[shard[0]] = shard[1]
    pid = os.getpid()
    if _started_in == [pid]:
        return
    with _lock:
        if _started_in == [pid]:
            return
        _started_in[:] = [pid]
        threading.Thread(target=_run, args=(app, chain), name="audit-sequencer", daemon=True).start()


def _run(app: Flask, chain: Callable[..., int]) -> None:
    """Chain in batches until the interval is set to 0; one warning per outage, a traceback per other failure."""
    engines, keyring = app.extensions["hie.engines"], app.extensions["hie.keyring"]
    unreachable = False
    while True:
        time.sleep(app.config["HIE"].audit_chain_interval)
        if not app.config["HIE"].audit_chain_interval:
            with _lock:
                _started_in.clear()
            return
        try:
            chain(engines.platform, keyring, shards=dict(_shards))
            unreachable = False
        except Exception as exc:
            if not database_unreachable(exc):
                log.exception("chaining audit events failed; they stay pending for the next round")
            elif not unreachable:
                unreachable = True
                log.warning("audit sequencer: a database is unreachable (%s); events stay pending", type(exc).__name__)
