"""``make run``: the whole stack on this machine, in the foreground; Ctrl-C stops all five.

Starts text, vision and audio (default real models), fusion (serving the heads in ./heads) and the
gateway, each on the ports its settings name (the defaults, or MMSERVE_<SERVICE>_PORT and
MMSERVE_<SERVICE>_METRICS_PORT), waits until /readyz answers, then prints where to call it. The
fine-tuned text models ``make finetune-demo`` leaves in ./models (``ner``, ``classifier``) are
served by the text service when they are there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.stack import ROOT, Stack, start_stack
from services.common.settings import SERVICE_SETTINGS, load_settings


def configured_ports() -> tuple[dict[str, int], dict[str, int]]:
    """Each service's port and metrics port, from its own settings (the README's configuration
    table): the same MMSERVE_* variables that move a deployed service move it here too."""
    settings = {kind: load_settings(cls) for kind, cls in SERVICE_SETTINGS.items()}
    ports = {kind: each.port for kind, each in settings.items()}
    metrics_ports = {kind: each.metrics_port for kind, each in settings.items() if kind != "gateway"}
    return ports, metrics_ports


def ports_in_use(ports: dict[str, int], metrics_ports: dict[str, int]) -> list[str]:
    """The wanted ports something else already listens on, each with the variable that moves it:
    found before the models load, not after (and no gRPC server shares a port: so_reuseport is off)."""
    wanted = [(port, f"MMSERVE_{kind.upper()}_PORT") for kind, port in ports.items()]
    wanted += [(port, f"MMSERVE_{kind.upper()}_METRICS_PORT") for kind, port in metrics_ports.items()]
    busy = []
    for port, variable in wanted:
        if port <= 0:  # 0: a free one is picked; -1: metrics off
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{port} ({variable})")
    return busy


class _KillNow(Exception):
    """A second Ctrl-C or SIGTERM: stop waiting for graceful exits."""


class _StopSignals:
    """Ctrl-C and SIGTERM (e.g. from a supervisor): the first asks for a graceful stop, the second
    for the rest to be killed at once; later ones are ignored."""

    def __init__(self) -> None:
        self.count = 0
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._received)

    def _received(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 2:
            self.ignore()
            raise _KillNow

    @staticmethod
    def ignore() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def wait_ready(url: str, signals: _StopSignals, timeout_s: float = 120.0) -> bool:
    """True once /readyz answers 200; False if a stop signal comes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not signals.count:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    if signals.count:
        return False
    raise TimeoutError(f"{url}/readyz did not become ready in {timeout_s:.0f}s")


def finetuned_model_args(models_dir: Path) -> list[str]:
    """Text service flags for the fine-tuned models found in ``models_dir`` (unless the
    environment already names a model: an explicit choice wins)."""
    args = []
    for folder, flag, env in (
        ("ner", "--ner-model", "MMSERVE_TEXT_NER_MODEL"),
        ("classifier", "--classifier-model", "MMSERVE_TEXT_CLASSIFIER_MODEL"),
    ):
        if (models_dir / folder / "config.json").is_file() and not os.environ.get(env):
            print(f"serving the fine-tuned {folder} model in {models_dir / folder}", flush=True)
            args += [flag, str(models_dir / folder)]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heads-dir", default=str(ROOT / "heads"))
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help="Fine-tuned text models.")
    parser.add_argument("--log-dir", default=str(ROOT / "build" / "logs"))
    args = parser.parse_args()
    ports, metrics_ports = configured_ports()
    busy = ports_in_use(ports, metrics_ports)
    if busy:
        raise SystemExit(f"ports already in use: {', '.join(busy)}; set the variable to another port")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    Path(args.heads_dir).mkdir(parents=True, exist_ok=True)

    print(f"starting text, vision, audio, fusion and gateway (logs in {log_dir}) ...", flush=True)
    # Development: reflection on, so grpcurl can list and call the services (all on 127.0.0.1).
    dev = ["--reflection", "true"]
    extra_args = {
        "text": [*dev, *finetuned_model_args(Path(args.models_dir))],
        "vision": dev,
        "audio": dev,
        "fusion": dev,
    }
    try:
        stack = start_stack(
            ports=ports,
            metrics_ports=metrics_ports,
            heads_dir=args.heads_dir,
            log_dir=log_dir,
            extra_args=extra_args,
        )
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # start_stack has stopped what it started
    except (RuntimeError, TimeoutError) as failure:  # a service exited or never served: its log says why
        raise SystemExit(f"mmserve did not start: {failure}") from None
    signals = _StopSignals()
    try:
        serve_in_foreground(stack, signals)
    except _KillNow:
        pass  # a second signal before stopping began: stop() kills at once
    finally:
        stop(stack, signals)


def serve_in_foreground(stack: Stack, signals: _StopSignals) -> None:
    """Returns on the first Ctrl-C or SIGTERM; exits with 1 if a service dies first."""
    host = f"localhost:{stack.gateway.port}"
    gateway = f"http://{host}"
    if not wait_ready(stack.gateway.url, signals):
        return
    body = json.dumps({"input": ["a photo of a cat", "a dog on a skateboard"]})
    metrics = ", ".join(
        f"localhost:{service.metrics_port}/metrics ({service.kind})"
        for service in reversed(stack.services)  # the order they start in: encoders, then fusion
        if service.metrics_port
    )
    print(
        f"\nmmserve is ready at {gateway}  (docs: {gateway}/docs)\n\n"
        f"  curl -s {host}/v1/embeddings "
        f"-H 'Content-Type: application/json' -d '{body}'\n\n"
        f"Prometheus metrics: {host}/metrics (gateway), {metrics}.\n"
        "Ctrl-C stops all five services (a second Ctrl-C kills them at once).",
        flush=True,
    )
    while not signals.count:
        dead = [s for s in stack.services if s.process.poll() is not None]
        for service in dead:
            print(
                f"\n{service.kind} exited with {service.process.returncode}:\n{service.log_tail()}",
                file=sys.stderr,
            )
        if dead:
            raise SystemExit(1)
        time.sleep(0.1)


def stop(stack: Stack, signals: _StopSignals) -> None:
    """Each service gets its grace period, unless a second signal came or comes meanwhile: then
    what is left is killed."""
    try:
        if signals.count < 2:
            print("\nstopping ...", flush=True)
            stack.stop()
            return
    except _KillNow:
        pass
    finally:
        signals.ignore()  # the stop is done or about to be forced: nothing left to interrupt
    print("killing what is left ...", flush=True)
    for service in stack.services:
        service.kill()


if __name__ == "__main__":
    main()
