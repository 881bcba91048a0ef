"""The dynamic batcher: batching, failure isolation, overload, deadlines and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.common.batcher import DynamicBatcher
from services.common.errors import DeadlineExceeded, InferenceError, InvalidInput, NotReady, Overloaded
from services.common.metrics import ServiceMetrics


def make_batcher(process, **kwargs) -> DynamicBatcher:
    options = {"max_batch_size": 8, "max_queue_size": 64, **kwargs}
    return DynamicBatcher(process, model="m", task="t", metrics=ServiceMetrics(), **options)


class GatedModel:
    """Doubles its inputs; blocks each forward pass until released, and records batch sizes."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.release.wait(5)
        self.batches.append(list(items))
        return [2 * x for x in items]


async def test_concurrent_requests_share_forward_passes() -> None:
    model = GatedModel()
    batcher = make_batcher(model)
    batcher.start()
    model.release.clear()
    first = asyncio.create_task(batcher.submit([0]))
    await asyncio.sleep(0.05)  # the worker is now blocked inside the first forward pass
    rest = [asyncio.create_task(batcher.submit([i])) for i in range(1, 7)]
    await asyncio.sleep(0.05)
    model.release.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    assert [list(r) for r in results] == [[2 * i] for i in range(7)]
    assert model.batches[0] == [0]
    assert sorted(model.batches[1]) == list(range(1, 7)), "requests queued during a pass share the next one"


async def test_lone_request_does_not_wait_for_max_wait_when_greedy() -> None:
    batcher = make_batcher(GatedModel(), max_wait_ms=0)
    batcher.start()
    began = time.perf_counter()
    assert list(await batcher.submit([21])) == [42]
    elapsed = time.perf_counter() - began
    await batcher.stop()
    assert elapsed < 0.5


async def test_max_batch_size_and_padded_cost_budget_split_batches() -> None:
    model = GatedModel()
    # Items are their own token counts; the budget is padded tokens: max(len) x items <= 20.
    batcher = make_batcher(model, max_batch_size=8, cost=lambda x: x, max_batch_cost=20)
    batcher.start()
    model.release.clear()
    blocker = asyncio.create_task(batcher.submit([0]))
    await asyncio.sleep(0.05)
    # Summed, 2+2+2+2+10 = 18 would fit in one pass; padded to the longest it is 10 x 5 = 50.
    tasks = [asyncio.create_task(batcher.submit([v])) for v in (2, 2, 2, 2, 10, 2, 2)]
    await asyncio.sleep(0.05)
    model.release.set()
    await asyncio.gather(blocker, *tasks)
    await batcher.stop()
    assert model.batches[1:] == [[2, 2, 2, 2], [10, 2], [2]]
    for batch in model.batches:
        assert len(batch) <= 8
        assert max(batch) * len(batch) <= 20 or len(batch) == 1


async def test_one_over_budget_item_still_runs_alone() -> None:
    model = GatedModel()
    batcher = make_batcher(model, cost=lambda x: x, max_batch_cost=5)
    batcher.start()
    assert list(await batcher.submit([9])) == [18]  # never starved: a batch holds at least one request
    await batcher.stop()


async def test_failing_batch_fails_only_its_requests_and_loop_continues() -> None:
    def flaky(items: list[int]) -> list[int]:
        if -1 in items:
            raise RuntimeError("boom")
        return items

    batcher = make_batcher(flaky)
    batcher.start()
    with pytest.raises(InferenceError, match="RuntimeError: boom"):
        await batcher.submit([-1])
    assert list(await batcher.submit([5])) == [5]
    await batcher.stop()


async def test_domain_errors_from_the_model_pass_through() -> None:
    def picky(items: list[int]) -> list[int]:
        raise InvalidInput("item is not acceptable")

    batcher = make_batcher(picky)
    batcher.start()
    with pytest.raises(InvalidInput, match="not acceptable"):
        await batcher.submit([1])
    await batcher.stop()


async def test_wrong_output_count_is_an_inference_error() -> None:
    batcher = make_batcher(lambda items: items[:-1])
    batcher.start()
    with pytest.raises(InferenceError, match="1 outputs for 2 inputs"):
        await batcher.submit([1, 2])
    await batcher.stop()


async def test_full_queue_raises_overloaded() -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_queue_size=4)
    batcher.start()
    model.release.clear()
    running = asyncio.create_task(batcher.submit([0]))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(batcher.submit([1, 2, 3, 4]))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="retry later"):
        await batcher.submit([5])
    model.release.set()
    await asyncio.gather(running, queued)
    await batcher.stop()


async def test_expired_and_cancelled_requests_are_dropped_before_the_forward_pass() -> None:
    model = GatedModel()
    batcher = make_batcher(model)
    batcher.start()
    model.release.clear()
    running = asyncio.create_task(batcher.submit([0]))
    await asyncio.sleep(0.05)
    expiring = asyncio.create_task(batcher.submit([1], timeout_s=0.01))
    cancelled = asyncio.create_task(batcher.submit([2]))
    kept = asyncio.create_task(batcher.submit([3]))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    model.release.set()
    await running
    with pytest.raises(DeadlineExceeded):
        await expiring
    assert list(await kept) == [6]
    await batcher.stop()
    seen = [x for batch in model.batches for x in batch]
    assert 1 not in seen and 2 not in seen


async def test_stop_drains_queue_then_refuses_new_work() -> None:
    model = GatedModel()
    batcher = make_batcher(model)
    batcher.start()
    model.release.clear()
    tasks = [asyncio.create_task(batcher.submit([i])) for i in range(5)]
    await asyncio.sleep(0.02)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0.02)
    model.release.set()
    await stopping
    assert [list(await t) for t in tasks] == [[2 * i] for i in range(5)]
    with pytest.raises(NotReady):
        await batcher.submit([1])


class LaneRecorder:
    """Records how many forward passes run at once; each pass holds for ``hold_s``."""

    def __init__(self, hold_s: float = 0.1) -> None:
        self.hold_s = hold_s
        self.running = self.most_at_once = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.hold_s)
        with self._lock:
            self.running -= 1
        return [2 * x for x in items]


@pytest.mark.parametrize("lanes", [1, 2, 3])
async def test_lanes_bound_the_forward_passes_running_at_once(lanes: int) -> None:
    model = LaneRecorder()
    batcher = make_batcher(model, max_batch_size=1, lanes=lanes)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(6)))
    await batcher.stop()
    assert [list(r) for r in results] == [[2 * i] for i in range(6)]
    assert model.most_at_once == lanes, "free lanes take queued work at once; never more than lanes"
    assert len(model.threads) == lanes


async def test_a_free_lane_takes_everything_queued_while_the_others_run() -> None:
    model = GatedModel()
    batcher = make_batcher(model, lanes=2)
    batcher.start()
    model.release.clear()
    first = []
    for i in range(2):
        first.append(asyncio.create_task(batcher.submit([i])))
        await asyncio.sleep(0.05)  # lane i now holds a single-item pass
    rest = [asyncio.create_task(batcher.submit([i])) for i in range(2, 8)]
    await asyncio.sleep(0.05)
    model.release.set()
    await asyncio.gather(*first, *rest)
    await batcher.stop()
    # Recorded in the order the passes finished, which the two lanes race for.
    assert sorted(model.batches) == [[0], [1], list(range(2, 8))], (
        "the first free lane takes everything queued"
    )


async def test_stop_waits_for_every_running_lane() -> None:
    model = LaneRecorder(hold_s=0.2)
    batcher = make_batcher(model, max_batch_size=1, lanes=2)
    batcher.start()
    pending = [asyncio.create_task(batcher.submit([i])) for i in range(3)]
    await asyncio.sleep(0.05)
    await batcher.stop()
    assert all(task.done() and not task.exception() for task in pending)
    assert model.running == 0


async def test_a_second_lane_waits_for_lane_min_items_beside_a_running_pass() -> None:
    model = GatedModel()
    batcher = make_batcher(model, lanes=2, lane_min_items=3)
    batcher.start()
    model.release.clear()
    first = asyncio.create_task(batcher.submit([0]))
    await asyncio.sleep(0.05)  # one lane holds [0]
    few = [asyncio.create_task(batcher.submit([i])) for i in (1, 2)]
    await asyncio.sleep(0.05)
    assert len(batcher._running) == 1, "two queued items do not open a second lane"
    third = asyncio.create_task(batcher.submit([3]))
    await asyncio.sleep(0.05)
    assert len(batcher._running) == 2, "the third one does"
    model.release.set()
    await asyncio.gather(first, *few, third)
    await batcher.stop()
    assert sorted(model.batches) == [[0], [1, 2, 3]]
