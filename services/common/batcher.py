"""The dynamic batcher: concurrent requests share one forward pass.

Greedy scheme (Triton's zero-delay default, TEI's queue): when the model is free the worker
takes whatever is queued at once, so a lone request never waits; batches form from what
arrived while the previous forward pass ran. ``max_wait_ms`` optionally holds an idle worker
a little longer for a fuller batch.

The forward pass runs on a worker thread, never on the event loop, so the server keeps
accepting and answering (health included) while the model computes. With ``lanes`` > 1, that
many forward passes run at once, each on its own thread: on CPU, one single-threaded forward per
core does 20-30 % more items per CPU second than one forward spread over every core (no OpenMP
barrier after each op, no threads sleeping and waking between ops), and a lane that another
process preempts stalls only its own batch. A free lane takes what is queued, so batches still
grow with the load; beside a running pass, a lane starts only once ``lane_min_items`` are
queued, since a pass has a fixed cost that a few short items alone do not repay (text at
concurrency 8: 148-172 items/s with 4 against 122-127 with 1).

A failing batch fails only its own requests; the loop carries on. Requests whose deadline
passed or whose caller went away are dropped before the forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.common import tracing
from services.common.errors import DeadlineExceeded, InferenceError, MmserveError, NotReady, Overloaded
from services.common.metrics import ServiceMetrics

ItemT = TypeVar("ItemT")
OutT = TypeVar("OutT")

_LOGGER = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    items: Sequence[Any]
    future: asyncio.Future
    deadline: float | None  # event-loop clock
    enqueued: float
    widest: int = field(default=1)  # cost of the request's most expensive item
    trace: Any = None  # the caller's trace context when tracing is on


class DynamicBatcher(Generic[ItemT, OutT]):
    """Batches items from concurrent ``submit`` calls into calls of ``process``.

    ``process`` gets a flat list of items and must return one output per item, in order.
    ``cost`` (optional) weighs each item for ``max_batch_cost``. A model pads every item of a
    batch to the longest one, so a batch costs ``max(cost) x items`` (for text: padded tokens),
    and one long input does not pad a whole batch of short ones beyond the budget.
    """

    def __init__(
        self,
        process: Callable[[list[ItemT]], Sequence[OutT]],
        *,
        model: str,
        task: str,
        metrics: ServiceMetrics,
        max_batch_size: int,
        max_wait_ms: float = 0.0,
        max_queue_size: int = 1024,
        cost: Callable[[ItemT], int] | None = None,
        max_batch_cost: int | None = None,
        lanes: int = 1,
        lane_min_items: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if lanes < 1:
            raise ValueError("lanes must be >= 1")
        self._process = process
        self._task = task
        self._max_batch_size = max_batch_size
        self._max_wait_s = max(max_wait_ms, 0.0) / 1000.0
        self._max_queue_size = max_queue_size
        self._cost = cost
        self._max_batch_cost = max_batch_cost
        self._pending: deque[_Request] = deque()
        self._queued_items = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._lanes = lanes
        self._lane_min_items = max(lane_min_items, 1)
        self._running: set[asyncio.Task] = set()  # one per busy lane
        self._executor = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix=f"{task}-forward")
        labels = {"model": model, "task": task}
        self._batch_size = metrics.batch_size.labels(**labels)
        self._queue_wait = metrics.queue_wait_seconds.labels(**labels)
        self._inference = metrics.inference_duration_seconds.labels(**labels)
        self._queue_depth = metrics.queue_depth.labels(**labels)
        self._failures = metrics.batch_failures.labels(**labels)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._task}")

    async def stop(self) -> None:
        """Refuses new work, finishes everything already queued, then stops the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[ItemT], timeout_s: float | None = None) -> Sequence[OutT]:
        """Queues ``items`` and waits for their outputs (one per item, in order)."""
        if self._closing or self._worker is None:
            raise NotReady("the service is shutting down" if self._closing else "the model is not loaded yet")
        count = len(items)
        if self._queued_items + count > self._max_queue_size:
            raise Overloaded(
                f"server overloaded: {self._queued_items} items already queued (limit {self._max_queue_size}); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        widest = max(map(self._cost, items), default=1) if self._cost is not None else 1
        request = _Request(
            items,
            loop.create_future(),
            now + timeout_s if timeout_s else None,
            now,
            widest,
            tracing.capture(),
        )
        self._pending.append(request)
        self._queued_items += count
        self._queue_depth.set(self._queued_items)
        self._wakeup.set()
        return await request.future

    def _dequeue(self) -> _Request:
        request = self._pending.popleft()
        self._queued_items -= len(request.items)
        return request

    def _take_batch(self, now: float) -> list[_Request]:
        """Pops queued requests that fit one forward pass, dropping expired or abandoned ones."""
        batch: list[_Request] = []
        items = widest = 0
        while self._pending:
            head = self._pending[0]
            if head.future.done():  # the caller was cancelled
                self._dequeue()
                continue
            if head.deadline is not None and head.deadline <= now:
                self._dequeue().future.set_exception(
                    DeadlineExceeded("deadline exceeded while waiting in the queue")
                )
                continue
            grown_items, grown_widest = items + len(head.items), max(widest, head.widest)
            over_size = grown_items > self._max_batch_size
            over_cost = self._max_batch_cost is not None and grown_widest * grown_items > self._max_batch_cost
            if batch and (over_size or over_cost):
                break
            batch.append(self._dequeue())
            items, widest = grown_items, grown_widest
        self._queue_depth.set(self._queued_items)
        return batch

    async def _wait_for_fuller_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self._pending[0].enqueued + self._max_wait_s
        while self._queued_items < self._max_batch_size and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending or not self._lane_free():
                if self._closing and not self._pending:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()  # new work, or a lane came free
                continue
            if self._max_wait_s > 0:
                await self._wait_for_fuller_batch(loop)
            batch = self._take_batch(loop.time())
            if batch:
                lane = loop.create_task(self._run_batch(loop, batch))
                self._running.add(lane)
                lane.add_done_callback(self._lane_done)
        if self._running:
            await asyncio.wait(self._running)

    def _lane_free(self) -> bool:
        """Whether a lane may start on what is queued now."""
        if not self._running:
            return True
        return len(self._running) < self._lanes and self._queued_items >= self._lane_min_items

    def _lane_done(self, lane: asyncio.Task) -> None:
        self._running.discard(lane)
        self._wakeup.set()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        started = loop.time()
        items: list[ItemT] = []
        for request in batch:
            self._queue_wait.observe(started - request.enqueued)
            items.extend(request.items)
        self._batch_size.observe(len(items))
        began = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._process, items)
            if len(outputs) != len(items):
                raise InferenceError(f"model returned {len(outputs)} outputs for {len(items)} inputs")
        except Exception as exc:  # noqa: BLE001 - a failing batch must not stop the loop
            self._failures.inc()
            if not isinstance(exc, MmserveError):
                _LOGGER.exception("forward pass failed for a batch of %d items", len(items))
                exc = InferenceError(f"inference failed: {type(exc).__name__}: {exc}")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            self._inference.observe(time.perf_counter() - began)
        if tracing.enabled():
            tracing.record_batch(
                [(request.trace, request.enqueued) for request in batch],
                started,
                loop.time(),
                {
                    "mmserve.task": self._task,
                    "mmserve.batch.items": len(items),
                    "mmserve.batch.requests": len(batch),
                },
            )
        offset = 0
        for request in batch:
            count = len(request.items)
            if not request.future.done():
                request.future.set_result(outputs[offset : offset + count])
            offset += count
