"""Runs the gateway: ``python -m gateway [--flags]`` (env MMSERVE_GATEWAY_*), under gunicorn
(the default) or granian (``--server granian``, gateway/granian_server.py).

Threads (gthread) suit a gateway that mostly waits on gRPC. No preload: each worker builds
its app, and so its gRPC channels, after the fork (grpc's fork-support rule).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from gateway.auth import parse_api_keys
from gateway.model_names import parse_aliases
from gateway.server_logs import json_logging
from gateway.worker import HeadTimeoutWorker
from services.common.logs import configure_logging
from services.common.settings import GatewaySettings, load_settings


class GatewayServer(BaseApplication):
    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self._settings
        HeadTimeoutWorker.read_timeout_s = s.body_read_timeout_s  # inherited by the forked workers
        for key, value in {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "threads": s.threads,
            # gthread, with the request head's reads bounded like the body's (gateway/worker.py).
            "worker_class": "gateway.worker.HeadTimeoutWorker",
            "graceful_timeout": 10,
            "timeout": int(s.deadline_s) + 30,
            "keepalive": 30,
            "accesslog": None,  # the app logs one JSON line per request itself, with its request id
            "logger_class": NoAccessLogger,
            "loglevel": s.log_level.lower(),
            "logconfig_dict": json_logging(s.log_level, "gunicorn.error"),
            "child_exit": _mark_worker_dead,
            # The default control socket is one fixed path per user: several gateways on a host would share it.
            "control_socket_disable": True,
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from gateway.app import create_app

        configure_logging("gateway", self._settings.log_level)
        return create_app(self._settings)


class NoAccessLogger(Logger):
    """gunicorn's logger without its access log. A log config (ours, for JSON lines) makes gunicorn
    build every request's access-log fields, all headers and environ included, even with no
    access log to write them to: ~0.1 ms of the gateway's CPU per request."""

    def access(self, resp, req, environ, request_time) -> None:
        return None


def _mark_worker_dead(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


SERVERS = ("gunicorn", "granian")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = load_settings(GatewaySettings, argv)
    configure_logging("gateway", settings.log_level)
    try:
        parse_api_keys(settings)  # fail before forking workers that would each fail to boot
        parse_aliases(settings.model_aliases)
        if settings.server not in SERVERS:
            raise ValueError(f"unknown server {settings.server!r}; choose from {', '.join(SERVERS)}")
    except ValueError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    # Several workers share one metrics view through files in a fresh directory.
    metrics_dir = tempfile.mkdtemp(prefix="mmserve-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    master_pid = os.getpid()
    try:
        if settings.server == "granian":
            from gateway.granian_server import serve

            serve(settings, argv)
        else:
            GatewayServer(settings).run()
    finally:
        # Workers are forks of this frame and exit through it too: only the master may remove the
        # directory, or a worker still booting would find it gone and fail.
        if os.getpid() == master_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
