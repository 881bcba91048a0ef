"""The gateway's text-call merging against a real gRPC server whose answers depend on each text."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from gateway.errors import ApiError, from_rpc_error
from gateway.text_merging import TextEmbedMerger, merged_request_id
from mmserve.v1 import text_pb2, text_pb2_grpc
from services.common.matrix import from_matrix, to_matrix
from tests.support.polling import wait_until


def vector(text: str) -> list[float]:
    """What the test service answers for one text, whatever call it came in."""
    return [float(len(text)), float(sum(map(ord, text)) % 997)]


class RecordingTextService(text_pb2_grpc.TextEncoderServiceServicer):
    """Answers each text on its own; holds calls while ``gate`` is clear; refuses texts saying "bad"."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def Embed(self, request, context):
        texts = list(request.texts)
        self.calls.append(texts)
        self.gate.wait(10)
        for index, text in enumerate(texts):
            if "bad" in text:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"texts[{index}] is bad")
        rows = [vector(t) for t in texts]
        if any("short of a row" in t for t in texts):  # a broken service's answer
            rows = rows[:-1]
        return text_pb2.EmbedTextResponse(
            embeddings=to_matrix(np.array(rows, dtype=np.float32)),
            token_counts=[len(t.split()) for t in texts],
            truncated=[t.endswith("!") for t in texts],
            model_id="recording",
        )


@pytest.fixture
def service():
    servicer = RecordingTextService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    text_pb2_grpc.add_TextEncoderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, text_pb2_grpc.TextEncoderServiceStub(channel).Embed
    channel.close()
    server.stop(0)


class Recorder:
    def __init__(self) -> None:
        self.codes: list[str] = []
        self.merged: list[int] = []
        self.alone: list[list[str]] = []  # requests sent by themselves

    def merger(self, rpc, *, max_items: int = 32, max_in_flight: int = 1) -> TextEmbedMerger:
        def call_alone(texts):  # what the gateway's Upstreams.call does for one request
            self.alone.append(list(texts))
            try:
                return rpc(text_pb2.EmbedTextRequest(texts=texts), timeout=10)
            except grpc.RpcError as error:
                raise from_rpc_error(error, "text") from None

        return TextEmbedMerger(
            rpc,
            call_alone,
            max_items=max_items,
            max_in_flight=max_in_flight,
            observe_call=lambda code, _seconds: self.codes.append(code),
            observe_merged=self.merged.append,
        )


def in_threads(merger: TextEmbedMerger, requests: list[list[str]], deadline_s: float = 10.0) -> list:
    """Each request's reply (or ApiError), sent from its own thread like the gateway's."""
    outcomes: list = [None] * len(requests)

    def send(index: int) -> None:
        try:
            outcomes[index] = merger.embed(requests[index], time.monotonic() + deadline_s, f"r{index}")
        except ApiError as error:
            outcomes[index] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    return outcomes, threads


def hold_first_call(servicer: RecordingTextService, merger: TextEmbedMerger):
    """A lone request whose call the service holds, so the next requests queue behind it."""
    servicer.gate.clear()
    outcomes, threads = in_threads(merger, [["the first one"]])
    wait_until(lambda: len(servicer.calls) == 1)
    return outcomes, threads


def test_requests_queued_behind_a_call_share_the_next_one_and_each_gets_its_own_rows(service) -> None:
    servicer, rpc = service
    recorder = Recorder()
    merger = recorder.merger(rpc)
    first, first_threads = hold_first_call(servicer, merger)
    queued = [["a cat"], ["two dogs", "a bird!"], ["stock markets fell"], ["x"]]
    outcomes, threads = in_threads(merger, queued)
    wait_until(lambda: len(merger._queue) == len(queued))
    servicer.gate.set()
    for thread in first_threads + threads:
        thread.join(10)

    assert servicer.calls[0] == ["the first one"]
    assert len(servicer.calls) == 2 and sorted(servicer.calls[1]) == sorted(t for r in queued for t in r)
    for texts, reply in zip([["the first one"], *queued], first + outcomes, strict=True):
        assert isinstance(reply, text_pb2.EmbedTextResponse), reply
        np.testing.assert_array_equal(from_matrix(reply.embeddings), np.array([vector(t) for t in texts]))
        assert list(reply.token_counts) == [len(t.split()) for t in texts]
        assert list(reply.truncated) == [t.endswith("!") for t in texts]
        assert reply.model_id == "recording"
    assert recorder.merged == [1, len(queued)] and recorder.codes == ["OK", "OK"]


def test_a_merged_call_holds_at_most_max_items_texts(service) -> None:
    servicer, rpc = service
    merger = Recorder().merger(rpc, max_items=4)
    _, first_threads = hold_first_call(servicer, merger)
    queued = [["a", "b"], ["c"], ["d", "e"], ["f"]]
    outcomes, threads = in_threads(merger, queued)
    wait_until(lambda: len(merger._queue) == len(queued))
    servicer.gate.set()
    for thread in first_threads + threads:
        thread.join(10)
    assert all(isinstance(reply, text_pb2.EmbedTextResponse) for reply in outcomes)
    assert all(len(call) <= 4 for call in servicer.calls) and len(servicer.calls) == 3


def test_an_invalid_text_fails_only_its_own_request_with_its_own_index(service) -> None:
    servicer, rpc = service
    recorder = Recorder()
    merger = recorder.merger(rpc)
    _, first_threads = hold_first_call(servicer, merger)
    queued = [["good one"], ["fine", "a bad text"], ["good two"]]
    outcomes, threads = in_threads(merger, queued)
    wait_until(lambda: len(merger._queue) == len(queued))
    servicer.gate.set()
    for thread in first_threads + threads:
        thread.join(10)

    good_one, bad, good_two = outcomes
    assert isinstance(good_one, text_pb2.EmbedTextResponse) and isinstance(
        good_two, text_pb2.EmbedTextResponse
    )
    np.testing.assert_array_equal(from_matrix(good_two.embeddings), np.array([vector("good two")]))
    assert isinstance(bad, ApiError) and bad.http_status == 400
    assert bad.message == "texts[1] is bad"  # its index in its own request, not in the merged call
    assert sorted(recorder.alone) == sorted(queued)  # each went again by itself


def test_a_merged_answer_that_does_not_fit_fails_its_requests_and_frees_its_place(service) -> None:
    servicer, rpc = service
    merger = Recorder().merger(rpc)
    _, first_threads = hold_first_call(servicer, merger)
    outcomes, threads = in_threads(merger, [["a cat"], ["answered short of a row"]])
    wait_until(lambda: len(merger._queue) == 2)
    servicer.gate.set()
    for thread in first_threads + threads:
        thread.join(10)
    assert all(isinstance(error, ApiError) and error.http_status == 500 for error in outcomes)
    assert "shape [1, 2] for 2 texts" in outcomes[0].message
    reply = merger.embed(["still served"], time.monotonic() + 5, "after")  # the call's place came back
    np.testing.assert_array_equal(from_matrix(reply.embeddings), np.array([vector("still served")]))


def test_a_queued_request_gives_up_at_its_deadline_and_is_never_sent(service) -> None:
    servicer, rpc = service
    merger = Recorder().merger(rpc)
    _, first_threads = hold_first_call(servicer, merger)
    began = time.monotonic()
    with pytest.raises(ApiError) as late:
        merger.embed(["too late"], time.monotonic() + 0.2, "late")
    assert late.value.http_status == 504 and time.monotonic() - began < 2
    servicer.gate.set()
    for thread in first_threads:
        thread.join(10)
    assert ["too late"] not in servicer.calls and not merger._queue


def test_a_full_request_does_not_wait_behind_the_queue(service) -> None:
    servicer, rpc = service
    recorder = Recorder()
    merger = recorder.merger(rpc, max_items=4)
    _, first_threads = hold_first_call(servicer, merger)
    full = ["one", "two", "three", "four"]
    outcomes, threads = in_threads(merger, [full])
    wait_until(lambda: full in servicer.calls)  # sent while the one merged call allowed is out
    servicer.gate.set()
    for thread in first_threads + threads:
        thread.join(10)
    np.testing.assert_array_equal(from_matrix(outcomes[0].embeddings), np.array([vector(t) for t in full]))
    assert recorder.alone == [full]


def test_an_unavailable_service_fails_every_request_fast() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    recorder = Recorder()
    merger = recorder.merger(text_pb2_grpc.TextEncoderServiceStub(channel).Embed, max_in_flight=2)
    began = time.monotonic()
    outcomes, threads = in_threads(merger, [[f"text {i}"] for i in range(12)])
    for thread in threads:
        thread.join(10)
    channel.close()
    assert all(isinstance(error, ApiError) and error.http_status == 503 for error in outcomes)
    assert time.monotonic() - began < 5 and set(recorder.codes) == {"UNAVAILABLE"}


def test_merged_request_ids_list_the_requests_while_they_fit() -> None:
    assert merged_request_id(["a1", "b2"]) == "a1,b2"
    long_ids = [f"{i:032x}" for i in range(10)]
    assert merged_request_id(long_ids) == f"{long_ids[0]}+9"
