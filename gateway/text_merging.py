"""One gateway worker's concurrent text-embedding calls, merged into fewer gRPC calls.

Each unary gRPC call costs the gateway about 0.4 ms of CPU and the text service as much again;
with one sentence per request at concurrency 32 on two cores, that is a large share of what a
sentence's forward pass costs. So a request's texts join a queue, and while fewer than
``max_in_flight`` merged calls are out, the caller sends everything queued (up to ``max_items``
texts) as one call. A lone request goes out at once (there is no timer); under load the queue
fills while calls are out, and the next call takes it all. The merged reply is cut back into one
reply per request, so handlers see exactly what an unmerged call would have answered.

A merged call the text service refuses as invalid (one text it will not take) must not fail its
neighbours, so each of its requests then sends its own call and gets its own answer.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from gateway.errors import ApiError, from_rpc_error
from mmserve.v1 import text_pb2
from services.common.errors import InvalidInput
from services.common.logs import MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER
from services.common.matrix import from_matrix, to_matrix

_LOGGER = logging.getLogger(__name__)
_SERVICE = "text"

# (gRPC code name, seconds) -> None: the caller's metrics for each call sent.
ObserveCall = Callable[[str, float], None]
# texts -> the reply of a call of their own, or the client's ApiError (on the request's thread).
CallAlone = Callable[[Sequence[str]], text_pb2.EmbedTextResponse]


@dataclass(eq=False)
class _Request:
    """One HTTP request's texts, waiting for their share of a merged reply."""

    texts: Sequence[str]
    deadline: float  # time.monotonic()
    request_id: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: text_pb2.EmbedTextResponse | None = None
    error: ApiError | None = None
    alone: bool = False  # its merged call was refused as invalid: it goes again by itself


def merged_request_id(ids: Sequence[str]) -> str:
    """The ids of the requests a merged call answers, as many as fit the services' limit."""
    joined = ",".join(ids)
    if len(joined) <= MAX_REQUEST_ID_LEN:
        return joined
    return f"{ids[0]}+{len(ids) - 1}"


class TextEmbedMerger:
    """Sends ``EmbedTextRequest``s through ``rpc`` (a unary multi-callable), merging concurrent ones."""

    def __init__(
        self,
        rpc: grpc.UnaryUnaryMultiCallable,
        call_alone: CallAlone,
        *,
        max_items: int,
        max_in_flight: int,
        observe_call: ObserveCall,
        observe_merged: Callable[[int], None],
    ) -> None:
        self._rpc = rpc
        self._call_alone = call_alone
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._observe_call = observe_call
        self._observe_merged = observe_merged
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._in_flight = 0

    def embed(self, texts: Sequence[str], deadline: float, request_id: str) -> text_pb2.EmbedTextResponse:
        """The reply for ``texts``, as one unmerged call would give it; raises the client's ApiError.
        Called on the request's own thread (``call_alone`` runs there)."""
        if len(texts) >= self._max_items:  # a full call already: nothing to gain by waiting
            return self._call_alone(texts)
        request = _Request(texts, deadline, request_id)
        with self._lock:
            self._queue.append(request)
            batch = self._take()
        if batch is not None:
            if any(queued is request for queued in batch):
                self._send(batch)  # our own answer is in it: wait for it on this thread (cheapest)
            else:
                self._start(batch)
        if not request.done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                if request in self._queue:
                    self._queue.remove(request)
            raise ApiError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the {_SERVICE} service did not answer within the deadline",
            )
        if request.alone:
            return self._call_alone(texts)
        if request.error is not None:
            raise request.error
        return request.reply

    def _take(self) -> list[_Request] | None:
        """The next merged call's requests, when a call may go out now (under the lock)."""
        if not self._queue or self._in_flight >= self._max_in_flight:
            return None
        batch = [self._queue.popleft()]
        items = len(batch[0].texts)
        while self._queue and items + len(self._queue[0].texts) <= self._max_items:
            items += len(self._queue[0].texts)
            batch.append(self._queue.popleft())
        self._in_flight += 1
        return batch

    def _invoke(self, call: Callable, batch: list[_Request]):
        """``call`` (the multi-callable or its ``future``) with the batch's texts, deadline and ids."""
        texts = batch[0].texts if len(batch) == 1 else [text for queued in batch for text in queued.texts]
        # The latest deadline: each request still gives up on its own at its own deadline.
        timeout = max(queued.deadline for queued in batch) - time.monotonic()
        metadata = ((REQUEST_ID_HEADER, merged_request_id([queued.request_id for queued in batch])),)
        return call(text_pb2.EmbedTextRequest(texts=texts), timeout=timeout, metadata=metadata)

    def _send(self, batch: list[_Request]) -> None:
        """Sends a merged call on this thread and answers its requests."""
        began = time.perf_counter()
        self._complete(batch, began, lambda: self._invoke(self._rpc, batch))

    def _start(self, batch: list[_Request]) -> None:
        """Starts a merged call without waiting; its completion answers its requests."""
        began = time.perf_counter()
        try:
            future = self._invoke(self._rpc.future, batch)
        except Exception as error:  # noqa: BLE001 - nothing was sent; its requests must still be answered
            self._complete(batch, began, functools.partial(_raise, error))
            return
        future.add_done_callback(lambda done: self._complete(batch, began, done.result))

    def _complete(
        self, batch: list[_Request], began: float, result: Callable[[], text_pb2.EmbedTextResponse]
    ) -> None:
        """Answers a merged call's requests from ``result()`` (its reply, or the error it raises)
        and frees its place for the requests queued behind it."""
        try:
            try:
                reply = result()
            except grpc.RpcError as error:
                self._observe_call(_code_name(error), time.perf_counter() - began)
                self._fail(batch, from_rpc_error(error, _SERVICE))
                return
            self._observe_call("OK", time.perf_counter() - began)
            self._answer(batch, reply)
        except Exception:  # noqa: BLE001 - a bug here must not leave requests waiting out their deadline
            _LOGGER.exception("a merged %s call failed", _SERVICE)
            self._fail(
                batch, ApiError(grpc.StatusCode.INTERNAL, f"the call to the {_SERVICE} service failed")
            )
        finally:
            self._finished()

    def _finished(self) -> None:
        """A merged call is back: the requests that queued meanwhile go out together."""
        with self._lock:
            self._in_flight -= 1
            batch = self._take()
        if batch is not None:
            self._start(batch)

    def _answer(self, batch: list[_Request], reply: text_pb2.EmbedTextResponse) -> None:
        self._observe_merged(len(batch))
        if len(batch) == 1:
            batch[0].reply = reply
            batch[0].done.set()
            return
        total = sum(len(queued.texts) for queued in batch)
        try:
            matrix = from_matrix(reply.embeddings)
            if matrix.ndim != 2 or len(matrix) != total:
                raise InvalidInput(f"embeddings of shape {list(matrix.shape)} for {total} texts")
        except InvalidInput as error:
            self._fail(batch, ApiError(grpc.StatusCode.INTERNAL, f"the {_SERVICE} service answered {error}"))
            return
        start = 0
        for queued in batch:
            end = start + len(queued.texts)
            queued.reply = text_pb2.EmbedTextResponse(
                embeddings=to_matrix(matrix[start:end]),
                token_counts=reply.token_counts[start:end],
                truncated=reply.truncated[start:end],
                model_id=reply.model_id,
            )
            start = end
            queued.done.set()

    def _fail(self, batch: list[_Request], error: ApiError) -> None:
        # An invalid text is one request's fault, and the service's message names its index in
        # the merged call: each request asks again alone, for its own answer.
        one_requests_fault = error.http_status == 400 and len(batch) > 1
        for queued in batch:
            queued.alone = one_requests_fault
            queued.error = error
            queued.done.set()


def _raise(error: BaseException):
    raise error


def _code_name(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    return code.name if code is not None else "UNKNOWN"
