"""Bookkeeping done after the response (gateway.deferred): it happens, off the caller's thread, in
order, survives a failing item, leaves no thread behind when idle, and is not lost at exit."""

from __future__ import annotations

import calendar
import json
import logging
import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

from gateway.deferred import DeferredWork
from services.common.logs import JsonFormatter
from tests.support.polling import eventually

THREAD_NAME = "gateway-deferred-work"


def worker_threads() -> set[threading.Thread]:
    # Other tests' apps may still have theirs, stopping on their own clocks: tests follow their own.
    return {thread for thread in threading.enumerate() if thread.name == THREAD_NAME}


def test_work_runs_in_order_on_another_thread_soon_after() -> None:
    deferred = DeferredWork(interval_s=0.02)
    done: list[tuple[int, int]] = []
    for index in range(5):
        deferred.later(lambda i: done.append((i, threading.get_ident())), index)
    assert eventually(lambda: len(done), lambda n: n == 5, timeout_s=2.0) == 5
    assert [index for index, _ in done] == list(range(5))
    assert threading.get_ident() not in {thread for _, thread in done}


def test_a_failing_item_is_logged_and_the_rest_still_run(caplog) -> None:
    deferred = DeferredWork(interval_s=60)  # never on its own during the test: run_pending does it
    done: list[str] = []
    deferred.later(done.append, "first")
    deferred.later(lambda: 1 / 0)
    deferred.later(done.append, "last")
    with caplog.at_level(logging.ERROR, logger="gateway.deferred"):
        assert deferred.run_pending() == 3
    assert done == ["first", "last"]
    assert "deferred work failed" in caplog.text and "ZeroDivisionError" in caplog.text
    assert deferred.run_pending() == 0


def test_the_thread_stops_when_idle_and_starts_again_for_new_work() -> None:
    before = worker_threads()
    deferred = DeferredWork(interval_s=0.02, idle_s=0.1)
    done: list[int] = []
    deferred.later(done.append, 1)
    (first,) = worker_threads() - before
    assert eventually(first.is_alive, lambda alive: not alive, timeout_s=3.0) is False
    assert done == [1]
    deferred.later(done.append, 2)
    (second,) = worker_threads() - before
    assert second is not first
    assert eventually(lambda: list(done), lambda d: d == [1, 2], timeout_s=2.0) == [1, 2]


_EXIT_SCRIPT = """
import sys
from gateway.deferred import DeferredWork
deferred = DeferredWork(interval_s=3600)
deferred.later(lambda: open(sys.argv[1], "w").write("done"))
"""


def _queue_then_exit(path: str) -> None:
    deferred = DeferredWork(interval_s=3600)
    deferred.later(lambda: Path(path).write_text("done"))


def test_work_still_queued_runs_when_the_process_exits(tmp_path: Path) -> None:
    # A normal interpreter exit (gunicorn's workers).
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, str(plain)], check=True, timeout=60)
    assert plain.read_text() == "done"
    # A multiprocessing child's exit, which skips atexit (granian's workers).
    child = tmp_path / "child"
    process = multiprocessing.get_context("fork").Process(target=_queue_then_exit, args=(str(child),))
    process.start()
    process.join(60)
    assert process.exitcode == 0 and child.read_text() == "done"


def test_a_line_written_later_carries_its_events_time_and_request_id() -> None:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "request", None, None)
    record.event_time = calendar.timegm((2026, 1, 2, 3, 4, 5)) + 0.25
    record.request_id = "req-7"
    line = json.loads(JsonFormatter("gateway").format(record))
    assert line["ts"] == "2026-01-02T03:04:05.250Z"
    assert line["request_id"] == "req-7"
