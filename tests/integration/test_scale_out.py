"""Scale-out as a Kubernetes client sees it: a DNS name whose answers change (an autoscaler adding
and removing pods behind a headless Service), two real text services on two loopback addresses,
and a client built with the project's channel code.

The servers close connections gracefully after ``max_connection_age``, so the client re-resolves:
a replica added to DNS gets traffic within a bound, and one removed from DNS and then stopped
costs no failed request.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from mmserve.v1 import text_pb2, text_pb2_grpc
from scripts.stack import ServiceProcess, free_port, start_service
from services.common.channels import DNS_MIN_RERESOLUTION_MS, create_channel
from tests.support.metrics import sample_value, scrape
from tests.support.tiny_text_models import save_tiny_classifier

NAME = "text.mmserve.test"
CONNECTION_AGE_S = 2.0
# A new replica must be in rotation within: connection age (+10% jitter) + the client's minimum
# re-resolution interval + reconnecting; doubled for a loaded 2-core machine.
JOIN_BOUND_S = 2 * (CONNECTION_AGE_S * 1.1 + DNS_MIN_RERESOLUTION_MS / 1000 + 1)


class ChangingAnswers(BaseResolver):
    """Answers A queries for NAME with whatever ``addresses`` holds now (TTL 1 s)."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def resolve(self, request, handler):
        reply = request.reply()
        question = request.q
        if str(question.qname).rstrip(".") == NAME and question.qtype in (QTYPE.A, QTYPE.ANY):
            for address in list(self.addresses):
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply  # AAAA, TXT, SRV: an empty answer


@pytest.fixture
def dns() -> Iterator[tuple[ChangingAnswers, int]]:
    answers = ChangingAnswers()
    port = free_port()
    quiet = DNSLogger(logf=lambda _: None)
    servers = [
        DNSServer(answers, address="127.0.0.1", port=port, tcp=tcp, logger=quiet) for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    yield answers, port
    for server in servers:
        server.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    model = save_tiny_classifier(tmp_path / "tiny")  # a small real encoder: the test is about routing
    port = free_port()
    args = ["--model", str(model), "--max-connection-age-s", str(CONNECTION_AGE_S),
            "--max-connection-age-grace-s", "5", "--torch-threads", "1"]  # fmt: skip
    started = [
        start_service("text", host=host, port=port, args=args, log_dir=tmp_path, wait=False)
        for host in ("127.0.0.2", "127.0.0.3")
    ]
    for service in started:
        service.wait_ready(180)
    yield started[0], started[1]
    for service in started:
        service.stop()


def embeds_handled(service: ServiceProcess) -> float:
    families = scrape(f"http://{service.host}:{service.metrics_port}/metrics")
    return sample_value(families, "grpc_server_handled_total", grpc_method="Embed")


class Traffic:
    """Threads calling Embed back to back through one channel; counts outcomes by status code."""

    def __init__(self, target: str, threads: int = 4) -> None:
        self._channel = create_channel(target)
        self._stub = text_pb2_grpc.TextEncoderServiceStub(self._channel)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        request = text_pb2.EmbedTextRequest(texts=["a sentence to embed"])
        while not self._stop.is_set():
            try:
                self._stub.Embed(request, timeout=5, wait_for_ready=True)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with self._lock:
                self.outcomes[code] += 1

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._channel.close()


def test_a_replica_added_to_dns_gets_traffic_and_one_removed_costs_no_failures(dns, replicas) -> None:
    answers, dns_port = dns
    first, second = replicas
    answers.addresses = [first.host]
    with Traffic(f"dns://127.0.0.1:{dns_port}/{NAME}:{first.port}") as traffic:
        time.sleep(3)
        assert embeds_handled(first) > 0 and embeds_handled(second) == 0

        answers.addresses = [first.host, second.host]  # scale-up
        added = time.monotonic()
        while embeds_handled(second) == 0:
            assert time.monotonic() - added < JOIN_BOUND_S, (
                f"the new replica got no call in {JOIN_BOUND_S:.0f} s"
            )
            time.sleep(0.2)
        joined_after = time.monotonic() - added
        before = (embeds_handled(first), embeds_handled(second))
        time.sleep(3)
        shares = (embeds_handled(first) - before[0], embeds_handled(second) - before[1])
        assert min(shares) > 0.25 * sum(shares), f"round robin over both replicas, got {shares}"

        answers.addresses = [first.host]  # scale-in: out of DNS first, then terminated
        time.sleep(CONNECTION_AGE_S * 1.1 + DNS_MIN_RERESOLUTION_MS / 1000 + 1)
        assert second.stop() == 0
        served_by_first = embeds_handled(first)
        time.sleep(2)
        assert embeds_handled(first) > served_by_first
    print(f"new replica in rotation after {joined_after:.1f} s; outcomes {dict(traffic.outcomes)}")
    assert set(traffic.outcomes) == {"OK"}, traffic.outcomes
