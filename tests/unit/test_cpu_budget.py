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


def test_a_lone_pass_runs_on_the_lone_thread_count_and_every_other_on_its_lanes() -> None:
    torch = pytest.importorskip("torch")
    from services.common.device import PassThreads

    seen: list[tuple[str, int]] = []

    def process(items: list[str]) -> list[str]:
        seen.append((items[0], torch.get_num_threads()))  # on the thread running the pass
        return items

    narrow, lone = PassThreads(alone=2, beside=1).widths(process)
    assert lone is not None

    def lane() -> None:  # one lane thread: each pass sets its own count, whatever ran before
        for run, name in ((lone, "lone"), (narrow, "beside"), (lone, "lone again")):
            run([name])

    thread = threading.Thread(target=lane)
    thread.start()
    thread.join(10)
    assert seen == [("lone", 2), ("beside", 1), ("lone again", 2)]
    assert PassThreads(alone=1, beside=1).widths(process) == (process, None)  # nothing to switch


def test_only_cpu_models_in_a_process_that_configured_threads_get_a_lone_pass() -> None:
    torch = pytest.importorskip("torch")
    from services.common import device

    def process(items: list[str]) -> list[str]:
        return items

    saved, threads = device._pass_threads, torch.get_num_threads()
    try:
        device._pass_threads = None  # an ONNX service never configures torch threads
        assert device.pass_widths(process, "cpu") == (process, None)
        assert device.lone_pass_threads() is None
        device._pass_threads = device.PassThreads(alone=2, beside=1)
        assert device.pass_widths(process, "cuda:0") == (process, None)  # a GPU batches, it needs no threads
        narrow, lone = device.pass_widths(process, "cpu")
        assert lone is not None and narrow(["a"]) == ["a"] and lone(["b"]) == ["b"]
        assert device.lone_pass_threads() == 2
        device._pass_threads = device.PassThreads(alone=1, beside=1)
        assert device.lone_pass_threads() is None  # no wider than a lane's: no lone session
    finally:
        device._pass_threads = saved
        torch.set_num_threads(threads)  # the passes above set this thread's count
