"""Overload (429 + Retry-After, bounded memory) and a short soak, through the real gateway."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.soak import soak
from scripts.procfs import rss_bytes, tree_rss_bytes
from scripts.stack import ServiceProcess, Stack, start_service
from tests.support.traffic import post_json


@pytest.fixture(scope="module")
def small_queue(log_dir) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    text = start_service("text", args=["--max-queue-size", "8", "--max-batch-size", "8"], log_dir=log_dir)
    gateway = start_service("gateway", args=["--text-address", text.address], log_dir=log_dir)
    yield text, gateway
    gateway.stop()
    text.stop()


def test_burst_far_above_capacity_gets_429_with_retry_after(small_queue) -> None:
    text, gateway = small_queue
    url = gateway.url + "/v1/embed/text"
    payload = {"texts": ["a burst of traffic far above what one small queue admits"] * 4}
    assert post_json(url, payload).status == 200
    rss_before = rss_bytes(text.process.pid), tree_rss_bytes(gateway.process.pid)
    with ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(lambda _: post_json(url, payload), range(480)))
    rss_after = rss_bytes(text.process.pid), tree_rss_bytes(gateway.process.pid)
    statuses = Counter(o.status for o in outcomes)
    growth_mb = [(a - b) / 2**20 for a, b in zip(rss_after, rss_before, strict=True)]
    print(
        f"\n[overload] statuses {dict(statuses)}; RSS growth text {growth_mb[0]:+.1f} MB, gateway {growth_mb[1]:+.1f} MB"
    )
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] >= 1 and statuses[429] >= 50, "admitted requests succeed, the excess is refused"
    rejected = [o for o in outcomes if o.status == 429]
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in rejected)
    assert all(b"RESOURCE_EXHAUSTED" in o.body for o in rejected)
    assert max(growth_mb) < 100, "memory stays bounded under a burst"
    assert post_json(url, payload).status == 200, "and the service serves normally afterwards"


def test_short_soak_has_no_errors_and_flat_memory(
    gateway_service, text_service, vision_service, fusion_service
) -> None:
    stack = Stack(text_service, vision_service, fusion_service, gateway_service)
    report = soak(stack, duration_s=20.0, concurrency=4)
    print(f"\n[soak 20 s]\n{report}")
    assert report.requests > 20
    assert report.errors == 0, report.statuses
    assert max(report.rss_growth_mb.values()) < 150, report.rss_growth_mb
