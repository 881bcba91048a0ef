"""A small closed-loop load generator and the table printer every benchmark uses.

``concurrency`` workers each send one request at a time; latencies are per request. The
generator is asyncio-based so that, on a 2-core machine, the client takes as little CPU as
possible from the server it measures.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scripts.procfs import children

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadResult:
    label: str
    concurrency: int
    requests: int
    items: int
    errors: int
    seconds: float
    latencies_s: np.ndarray

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if len(self.latencies_s) else float("nan")


async def run_load(
    label: str,
    call: Callable[[int], Awaitable[int]],
    *,
    concurrency: int,
    requests: int,
    warmup_requests: int = 0,
) -> LoadResult:
    """Sends ``requests`` calls with ``concurrency`` in flight; ``call(i)`` returns items handled."""
    for i in range(warmup_requests):
        await call(i)
    latencies: list[float] = []
    counts = {"items": 0, "errors": 0}
    next_index = iter(range(requests))

    async def worker() -> None:
        for i in next_index:
            began = time.perf_counter()
            try:
                handled = await call(i)  # awaited before the += so concurrent workers never lose counts
            except Exception:  # noqa: BLE001 - a benchmark counts failures, it does not stop on them
                counts["errors"] += 1
                continue
            latencies.append(time.perf_counter() - began)
            counts["items"] += handled

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    return LoadResult(
        label, concurrency, requests, counts["items"], counts["errors"], seconds, np.array(latencies)
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (a gunicorn master and its workers)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in children(pid))


def client_cpu_seconds() -> float:
    """User + system CPU of this process: the load generator's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_in_process(
    forward: Callable[[Sequence], object], items: Sequence, batch_size: int, seconds: float = 3.0
) -> float:
    """Items/s of calling ``forward`` directly with batches of ``batch_size`` (the model's ceiling)."""
    batch = [items[i % len(items)] for i in range(batch_size)]
    forward(batch)
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        forward(batch)
        done += batch_size
    return done / (time.perf_counter() - began)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [
        [f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for index, row in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def text_forward() -> Callable[[Sequence[str]], object]:
    """The default text model in this process: one forward pass per call."""
    from services.text.embedding import TextEmbedder

    embedder = TextEmbedder()
    embedder.load()
    return embedder.process


def vision_forward() -> Callable[[Sequence[bytes]], object]:
    """The default vision model in this process, from encoded images, as the service prepares them
    (decoding and preprocessing happen per request in every path measured, so they count here too)."""
    from services.common.settings import VisionSettings
    from services.vision.backend import create_model
    from services.vision.decoding import ImageLimits
    from services.vision.preprocessing import prepare_batch

    settings = VisionSettings()
    model = create_model(settings)
    model.load()
    limits = ImageLimits.from_settings(settings)
    return lambda images: model.embed(prepare_batch(images, limits, model.transform))


def audio_forward() -> Callable[[Sequence[bytes]], object]:
    """The default audio model in this process, from encoded clips, as the service prepares them
    (decoding, resampling and the log-mel front end count, as they do in every path measured)."""
    from services.audio.backend import create_model
    from services.audio.decoding import AudioLimits
    from services.audio.pipeline import embed_in_process
    from services.common.settings import AudioSettings

    settings = AudioSettings()
    model = create_model(settings)
    model.load()
    limits = AudioLimits.from_settings(settings)
    return lambda clips: embed_in_process(model, clips, limits)
