"""The CPU budget comes from the cgroup quota and the affinity mask, not the node's core count."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from services.common.cpu_budget import available_cpus, cgroup_cpu_quota


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_available_cpus_is_the_smaller_of_quota_and_affinity(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == cores  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(cores + 8) * 100000} 100000\n")
    assert available_cpus(tmp_path) == cores


@pytest.mark.parametrize("content", ["garbage", "100000"])
def test_unreadable_quota_falls_back_to_the_affinity_mask(tmp_path: Path, content: str) -> None:
    (tmp_path / "cpu.max").write_text(content)
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_forward_lanes_default_to_one_per_cpu_and_share_the_threads() -> None:
    from services.common.device import (
        GIL_SWITCH_INTERVAL_S,
        MAX_DEFAULT_LANES,
        configure_threads,
        forward_lanes,
    )

    cpus = available_cpus()
    assert forward_lanes(0, on_gpu=False) == min(cpus, MAX_DEFAULT_LANES)
    assert forward_lanes(0, on_gpu=True) == 1
    assert forward_lanes(3, on_gpu=False) == 3
    torch = pytest.importorskip("torch")
    from services.common import device

    before, switch_interval, pass_threads = (
        torch.get_num_threads(),
        sys.getswitchinterval(),
        device._pass_threads,
    )
    try:
        assert configure_threads(0, lanes=cpus) == 1 == torch.get_num_threads()
        assert configure_threads(0, lanes=MAX_DEFAULT_LANES) == max(1, cpus // MAX_DEFAULT_LANES)
        assert configure_threads(0, lanes=1) == cpus == torch.get_num_threads()
        assert configure_threads(3, lanes=cpus) == 3
        sys.setswitchinterval(switch_interval)
        configure_threads(1, lanes=2)
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S  # lanes > 1 share the GIL more often
        # A pass alone takes every lane's threads unless told otherwise.
        assert (device._pass_threads.alone, device._pass_threads.beside) == (2, 1)
        configure_threads(1, lanes=2, lone_pass_threads=1)
        assert (device._pass_threads.alone, device._pass_threads.beside) == (1, 1)
        # Never fewer than a lane's own: with one lane every pass is lone.
        configure_threads(2, lanes=1, lone_pass_threads=1)
        assert (device._pass_threads.alone, device._pass_threads.beside) == (2, 2)
    finally:
        torch.set_num_threads(before)
        sys.setswitchinterval(switch_interval)
        device._pass_threads = pass_threads


def test_a_pass_alone_gets_the_lone_thread_count_and_one_beside_it_its_lanes() -> None:
    torch = pytest.importorskip("torch")
    from services.common.device import PassThreads

    first_started, release_first = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def process(items: list[str]) -> list[str]:
        seen[items[0]] = torch.get_num_threads()  # on the thread running the pass
        if items[0] == "first":
            first_started.set()
            release_first.wait(10)
        return items

    run = PassThreads(alone=2, beside=1).around(process)
    first = threading.Thread(target=run, args=(["first"],))
    first.start()
    assert first_started.wait(10)
    beside = threading.Thread(target=run, args=(["beside"],))
    beside.start()
    beside.join(10)
    release_first.set()
    first.join(10)
    later = threading.Thread(target=run, args=(["later, alone again"],))
    later.start()
    later.join(10)
    assert seen == {"first": 2, "beside": 1, "later, alone again": 2}
    assert PassThreads(alone=1, beside=1).around(process) is process  # nothing to switch


def test_only_cpu_models_in_a_process_that_configured_threads_get_their_passes_widened() -> None:
    torch = pytest.importorskip("torch")
    from services.common import device

    def process(items: list[str]) -> list[str]:
        return items

    saved, threads = device._pass_threads, torch.get_num_threads()
    try:
        device._pass_threads = None  # an ONNX service never configures torch threads
        assert device.widen_lone_passes(process, "cpu") is process
        device._pass_threads = device.PassThreads(alone=2, beside=1)
        assert device.widen_lone_passes(process, "cuda:0") is process  # a GPU batches, it needs no threads
        widened = device.widen_lone_passes(process, "cpu")
        assert widened is not process and widened(["a"]) == ["a"]
    finally:
        device._pass_threads = saved
        torch.set_num_threads(threads)  # the widened pass set this thread's count
