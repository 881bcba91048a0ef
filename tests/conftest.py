"""Shared fixtures: the real services, started once per test session as separate processes.

Tests that kill or reconfigure a service start their own instance with
``scripts.stack.start_service`` instead of using these shared ones.
"""

from __future__ import annotations

import os

import scripts  # noqa: F401 - before grpc initialises: gRPC's fork handlers off (see scripts/__init__.py)

# isort: split
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.stack import ServiceProcess, start_service

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def heads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The heads directory the shared fusion service watches; tests may add heads to it."""
    return tmp_path_factory.mktemp("heads")


@pytest.fixture(scope="session")
def text_service(log_dir: Path) -> Iterator[ServiceProcess]:
    service = start_service("text", log_dir=log_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def vision_service(log_dir: Path) -> Iterator[ServiceProcess]:
    service = start_service("vision", log_dir=log_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def audio_service(log_dir: Path) -> Iterator[ServiceProcess]:
    service = start_service("audio", log_dir=log_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def fusion_service(
    text_service: ServiceProcess,
    vision_service: ServiceProcess,
    audio_service: ServiceProcess,
    heads_dir: Path,
    log_dir: Path,
) -> Iterator[ServiceProcess]:
    service = start_service(
        "fusion",
        args=[
            "--text-address",
            text_service.address,
            "--vision-address",
            vision_service.address,
            "--audio-address",
            audio_service.address,
            "--heads-dir",
            str(heads_dir),
            "--heads-reload-interval-s",
            "0.5",
        ],  # fmt: skip
        log_dir=log_dir,
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway_service(
    text_service: ServiceProcess,
    vision_service: ServiceProcess,
    fusion_service: ServiceProcess,
    audio_service: ServiceProcess,
    log_dir: Path,
) -> Iterator[ServiceProcess]:
    service = start_service(
        "gateway",
        args=[
            "--fusion-address",
            fusion_service.address,
            "--text-address",
            text_service.address,
            "--vision-address",
            vision_service.address,
            "--audio-address",
            audio_service.address,
        ],  # fmt: skip
        log_dir=log_dir,
    )
    yield service
    service.stop()


@pytest.fixture
def channel_to():
    """Opens insecure channels to services and closes them after the test."""
    channels: list[grpc.Channel] = []

    def open_channel(service: ServiceProcess) -> grpc.Channel:
        channel = grpc.insecure_channel(service.address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


DEMO_IMAGES = 1200


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo dataset, embedding cache and trained heads, made once per session."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo_heads(demo_workdir: Path) -> Path:
    """The demo heads (match, shape_colour, align), trained by the real training command as
    `make train-demo` runs it, on the real default encoders in-process."""
    import subprocess
    import sys

    from training import demo_data

    demo_data.generate(demo_workdir / "demo", n=DEMO_IMAGES, seed=0)
    command = [
        sys.executable, "-m", "training.heads", "demo",
        "--data", str(demo_workdir / "demo"),
        "--out", str(demo_workdir / "heads"),
        "--cache-dir", str(demo_workdir / "cache"),
        "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    return demo_workdir / "heads"
