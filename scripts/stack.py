"""Starts mmserve services as separate processes and waits until they serve.

Used by ``make run`` (the whole stack in the foreground), the end-to-end tests and the
benchmarks, so all three start the system the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "text": "services.text",
    "vision": "services.vision",
    "audio": "services.audio",
    "fusion": "services.fusion",
    "gateway": "gateway",
}
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Child processes get SIGTERM if the launcher dies, so no server outlives a killed test run."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ServiceProcess:
    """One running service; ``address`` is its gRPC target (or HTTP host:port for the gateway)."""

    kind: str
    port: int
    metrics_port: int | None
    args: list[str]
    env: dict[str, str]
    log_path: Path
    module: str = ""  # overrides the kind's module (tests run fault-injecting variants)
    credentials: grpc.ChannelCredentials | None = field(default=None, repr=False)  # TLS to the service
    process: subprocess.Popen | None = field(default=None, repr=False)
    host: str = "127.0.0.1"  # where it listens (tests put replicas on 127.0.0.2, 127.0.0.3, ...)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def spawn(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module or MODULES[self.kind], *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"{self.kind} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self.kind == "gateway":
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False
        return (
            health_status(self.address, credentials=self.credentials)
            == health_pb2.HealthCheckResponse.SERVING
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout_s: float = 180.0) -> ServiceProcess:
        """Starts the same service again on the same ports."""
        self.stop()
        return self.spawn().wait_ready(timeout_s)


def health_status(
    address: str,
    service: str = "",
    timeout_s: float = 1.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> int | None:
    channel = (
        grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
        return reply.status


# OpenMP busy-wait iterations before an idle thread sleeps (tens of microseconds).
SPIN_COUNT = "20000"


def start_service(
    kind: str,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    log_dir: Path | None = None,
    wait: bool = True,
    timeout_s: float = 180.0,
    module: str = "",
    credentials: grpc.ChannelCredentials | None = None,
    host: str = "127.0.0.1",
) -> ServiceProcess:
    """Starts one service on free ports (unless given; a ``metrics_port`` of -1 turns its metrics
    endpoint off) and, by default, waits until it serves. It listens on ``host`` only: loopback
    unless told otherwise, never every interface. The gateway serves its metrics on its own port."""
    port = port or free_port()
    metrics_port = None if kind == "gateway" else (metrics_port or free_port())
    full_args = ["--port", str(port), "--host", host]
    if metrics_port is not None:
        full_args += ["--metrics-port", str(metrics_port)]
        metrics_port = metrics_port if metrics_port > 0 else None
    full_args += list(args)
    # Idle OpenMP threads spin only briefly (libgomp's default spin is 15x longer) unless the
    # caller says otherwise: the services share these cores, and long-spinning threads of one
    # starve the others (bench/mixed.py measures it), yet a lone pass on two threads needs its
    # team awake between ops (docs/performance.md).
    defaults = {"GOMP_SPINCOUNT": SPIN_COUNT}
    merged = {
        **defaults,
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    full_env = {name: value for name, value in merged.items() if value is not None}  # None: unset it
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="mmserve-logs-"))
    service = ServiceProcess(
        kind, port, metrics_port, full_args, full_env, log_dir / f"{kind}-{host}-{port}.log", module,
        credentials, host=host,
    ).spawn()  # fmt: skip
    if wait:
        try:
            service.wait_ready(timeout_s)
        except Exception:
            service.kill()
            raise
    return service


@dataclass
class Stack:
    """The five services wired together (stacks built by hand may leave audio out)."""

    text: ServiceProcess
    vision: ServiceProcess
    fusion: ServiceProcess
    gateway: ServiceProcess
    audio: ServiceProcess | None = None

    @property
    def services(self) -> list[ServiceProcess]:
        encoders = [self.vision, self.text] if self.audio is None else [self.audio, self.vision, self.text]
        return [self.gateway, self.fusion, *encoders]

    def stop(self) -> None:
        for service in self.services:
            service.stop()


def start_stack(
    *,
    ports: Mapping[str, int] | None = None,
    metrics_ports: Mapping[str, int] | None = None,
    extra_args: Mapping[str, Sequence[str]] | None = None,
    env: Mapping[str, str | None] | None = None,
    heads_dir: str | None = None,
    log_dir: Path | None = None,
    timeout_s: float = 300.0,
    modules: Mapping[str, str] | None = None,
) -> Stack:
    """Starts text, vision and audio (loading in parallel), then fusion, then the gateway."""
    ports = ports or {}
    metrics_ports = metrics_ports or {}
    extra_args = extra_args or {}
    started: list[ServiceProcess] = []

    def launch(kind: str, args: Sequence[str], wait: bool) -> ServiceProcess:
        service = start_service(
            kind,
            args=[*args, *extra_args.get(kind, ())],
            env=env,
            port=ports.get(kind),
            metrics_port=metrics_ports.get(kind),
            log_dir=log_dir,
            wait=wait,
            timeout_s=timeout_s,
            module=(modules or {}).get(kind, ""),
        )
        started.append(service)
        return service

    try:
        text = launch("text", [], wait=False)
        vision = launch("vision", [], wait=False)
        audio = launch("audio", [], wait=False)
        text.wait_ready(timeout_s)
        vision.wait_ready(timeout_s)
        audio.wait_ready(timeout_s)
        fusion_args = ["--text-address", text.address, "--vision-address", vision.address]
        fusion_args += ["--audio-address", audio.address]
        if heads_dir is not None:
            fusion_args += ["--heads-dir", heads_dir]
        fusion = launch("fusion", fusion_args, wait=True)
        gateway = launch(
            "gateway",
            [
                "--fusion-address",
                fusion.address,
                "--text-address",
                text.address,
                "--vision-address",
                vision.address,
                "--audio-address",
                audio.address,
            ],  # fmt: skip
            wait=True,
        )
    except BaseException:
        for service in reversed(started):
            service.kill()
        raise
    return Stack(text, vision, fusion, gateway, audio)
