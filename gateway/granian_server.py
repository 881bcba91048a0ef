"""The gateway under granian (``--server granian``): Rust HTTP/1 in front of the same Flask app.

Measured against gunicorn's gthread workers, one text service, interleaved: about 0.3 ms less
gateway CPU per request (1.16-1.18 vs 1.46-1.55 ms at concurrency 32, 1.8 vs 2.05 at 8), with
throughput within noise. What gunicorn's worker gives the gateway, and how it is kept here:

- A request head must arrive within ``body_read_timeout_s``: granian's header read timeout
  (which it caps at 60 s).
- Each read of a body waits at most ``body_read_timeout_s`` under gunicorn. granian reads bodies
  in Rust, with no timeout; gateway/body_limit.py still checks the body's deadline between
  reads, but a body that stops arriving holds its thread until the client goes. Run granian
  behind a proxy that buffers request bodies (ingress-nginx does by default).
- The metrics of a worker that exits are cleaned from the shared multiprocess directory: each
  worker does it itself on its way out (a worker killed outright leaves its in-flight gauge).
- The server's own log lines are the app's JSON lines.
"""

from __future__ import annotations

import json
import multiprocessing.util
import os
from pathlib import Path

from flask import Flask

from gateway.server_logs import json_logging
from services.common.logs import configure_logging
from services.common.settings import GatewaySettings, load_settings

_ARGV_ENV = "MMSERVE_GATEWAY_WORKER_ARGV"  # the command line, from which each worker reads its settings
_ROOT = Path(__file__).resolve().parent.parent
_MAX_HEAD_TIMEOUT_MS = 60_000  # granian's limit


def serve(settings: GatewaySettings, argv: list[str]) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    os.environ[_ARGV_ENV] = json.dumps(argv)
    head_timeout_ms = min(max(int(settings.body_read_timeout_s * 1000), 1), _MAX_HEAD_TIMEOUT_MS)
    Granian(
        "gateway.granian_server:worker_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=settings.workers,
        blocking_threads=settings.threads,
        http1_settings=HTTP1Settings(header_read_timeout=head_timeout_ms),
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig=json_logging(settings.log_level, "_granian"),
        log_access=False,  # the app logs one JSON line per request itself, with its request id
        respawn_failed_workers=True,
        workers_kill_timeout=10,
        factory=True,
        working_dir=_ROOT,
    ).serve()


def worker_app() -> Flask:
    """Each worker's app, built in the worker (after the fork: grpc's fork-support rule)."""
    from prometheus_client import multiprocess

    from gateway.app import create_app

    settings = load_settings(GatewaySettings, json.loads(os.environ[_ARGV_ENV]))
    configure_logging("gateway", settings.log_level)
    # multiprocessing's finalizers run when a worker process exits normally; atexit's do not.
    multiprocessing.util.Finalize(None, multiprocess.mark_process_dead, args=(os.getpid(),), exitpriority=0)
    return create_app(settings)
