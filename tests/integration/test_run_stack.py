"""`make run`'s launcher as a user runs it: all five services with the default real models, on the
ports their MMSERVE_* variables name, serving REST and metrics; stopped by a supervisor's SIGTERM,
and a second SIGTERM kills what is left at once, with no traceback and no process left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from scripts.procfs import children, descendants
from scripts.stack import ROOT, free_port
from tests.support.polling import eventually
from tests.support.traffic import post_json

KINDS = ("text", "vision", "audio", "fusion", "gateway")


class Output:
    """The launcher's stdout and stderr, read as they come (so the pipe never fills)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def finish(self) -> str:
        self._reader.join(10)
        return self.text


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def free_ports() -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Ports for every service and its metrics, and the environment that names them."""
    ports = {kind: free_port() for kind in KINDS}
    metrics_ports = {kind: free_port() for kind in KINDS if kind != "gateway"}
    env = {
        **os.environ,
        **{f"MMSERVE_{kind.upper()}_PORT": str(port) for kind, port in ports.items()},
        **{f"MMSERVE_{kind.upper()}_METRICS_PORT": str(port) for kind, port in metrics_ports.items()},
    }
    return ports, metrics_ports, env


def test_make_run_serves_on_the_configured_ports_and_stops_on_signals(tmp_path: Path) -> None:
    ports, metrics_ports, env = free_ports()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "scripts.run_stack", "--heads-dir", str(tmp_path / "heads"),
         "--models-dir", str(tmp_path / "models"), "--log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = Output(launcher)
    try:
        ready = eventually(  # or the launcher's exit, whose output says why
            lambda: output.text, lambda text: "mmserve is ready" in text or launcher.poll() is not None, 300
        )
        assert f"mmserve is ready at http://localhost:{ports['gateway']}" in ready, ready
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        reply = post_json(gateway + "/v1/embeddings", {"input": "served by make run"})
        assert reply.status == 200 and len(reply.json["data"][0]["embedding"]) == 384
        for kind, port in metrics_ports.items():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                assert b"mmserve_" in response.read(), kind
            assert f"localhost:{port}/metrics ({kind})" in ready
        services = children(launcher.pid)
        left_behind = descendants(launcher.pid)
        assert len(services) == len(KINDS)

        launcher.send_signal(signal.SIGTERM)  # a supervisor stops it ...
        eventually(lambda: output.text, lambda text: "stopping" in text, timeout_s=10)
        launcher.send_signal(signal.SIGTERM)  # ... and does not wait for the graceful stop
        began = time.monotonic()
        assert launcher.wait(30) == 0
        assert time.monotonic() - began < 10  # killed, not each given its grace period
        text = output.finish()
        assert "killing what is left" in text and "Traceback" not in text, text
        alive = eventually(
            lambda: [pid for pid in left_behind if running(pid)], lambda pids: not pids, timeout_s=10
        )
        assert not alive, f"left running: {alive}"  # gunicorn's workers too
    finally:
        if launcher.poll() is None:
            launcher.kill()  # its services get SIGTERM as it dies (scripts.stack sets that up)
            launcher.wait()


def test_a_port_in_use_is_named_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        finished = subprocess.run(
            [sys.executable, "-m", "scripts.run_stack", "--log-dir", str(tmp_path / "logs")],
            cwd=ROOT, env={**free_ports()[2], "MMSERVE_VISION_METRICS_PORT": str(port)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert finished.returncode == 1
    assert f"ports already in use: {port} (MMSERVE_VISION_METRICS_PORT);" in finished.stderr
    assert "Traceback" not in finished.stderr and "starting" not in finished.stdout
    assert time.monotonic() - began < 30  # told at once, not after the models load
