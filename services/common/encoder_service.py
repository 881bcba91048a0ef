"""What every encoder service does the same way: load its backends, run one dynamic batcher per
task, warm up, report readiness and GetModelInfo, drain on stop.

A modality's servicer subclasses ``EncoderService`` (and its generated gRPC servicer), names its
tasks' backends, and adds only what is its own: request validation, input preparation and
packing replies. A new modality is a backend plus a thin servicer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import grpc

from mmserve.v1 import common_pb2
from services.common.backend import ModelBackend, ModelDescription
from services.common.batcher import DynamicBatcher
from services.common.device import forward_lanes, widen_lone_passes
from services.common.errors import InvalidInput, NotReady
from services.common.metrics import ServiceMetrics
from services.common.settings import EncoderSettings


def check_item_count(items: Sequence[Any], limit: int, field: str, noun: str) -> list[Any]:
    """The per-request item limits every encoder enforces, with messages a person can act on."""
    if not items:
        raise InvalidInput(f"{field} must contain at least one {noun}")
    if len(items) > limit:
        raise InvalidInput(f"too many {field}: {len(items)} (limit {limit} per request)")
    return list(items)


def resolve_top_k(requested: int, default: int, available: int) -> int:
    """How many labels a Classify call returns: the request's (0: the service default), at most
    as many as the model has."""
    if requested < 0:
        raise InvalidInput(f"top_k must be >= 0 (0 means the default, {default}); got {requested}")
    return min(requested or default, available)


def label_scores(ranked: Sequence[tuple[str, float]]) -> list[common_pb2.LabelScore]:
    return [common_pb2.LabelScore(label=label, score=score) for label, score in ranked]


class EncoderService:
    """Lifecycle and batching of one encoder service; ``backends`` maps task -> backend.

    The first task is the service's main model: its description answers GetModelInfo.
    """

    modality: ClassVar[int] = common_pb2.MODALITY_UNSPECIFIED
    name: ClassVar[str] = "encoder"

    def __init__(
        self,
        settings: EncoderSettings,
        metrics: ServiceMetrics,
        backends: Mapping[str, ModelBackend],
        max_batch_cost: int | None = None,
    ) -> None:
        if not backends:
            raise ValueError("an encoder service needs at least one backend")
        self._settings = settings
        self._metrics = metrics
        self._backends = dict(backends)
        self._main_task = next(iter(self._backends))
        self._max_batch_cost = max_batch_cost or None
        self._batchers: dict[str, DynamicBatcher] = {}
        self._descriptions: dict[str, ModelDescription] = {}

    async def start(self) -> None:
        """Loads every backend, starts the batchers, warms up; only then accepts requests."""
        descriptions = {}
        for task, backend in self._backends.items():
            descriptions[task] = await asyncio.to_thread(backend.load)
            self._batchers[task] = self._batcher(task, backend, descriptions[task])
            self._batchers[task].start()
        if self._settings.warmup:
            await self.warm_up(descriptions)
        # Requests are accepted only from here on: the batchers exist and the models answered.
        self._descriptions = descriptions

    def _batcher(self, task: str, backend: ModelBackend, description: ModelDescription) -> DynamicBatcher:
        s = self._settings
        return DynamicBatcher(
            widen_lone_passes(backend.process, description.device),
            model=description.model_id,
            task=task,
            metrics=self._metrics,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_size=s.max_queue_size,
            cost=backend.item_cost,
            max_batch_cost=self._max_batch_cost,
            lanes=self._lanes(backend, description),
            lane_min_items=s.lane_min_items,
        )

    def _lanes(self, backend: ModelBackend, description: ModelDescription) -> int:
        """Forward passes this backend runs at once: one unless it opted in (``parallel_forward``);
        decided from where the loaded model runs, so no service imports a framework to find out."""
        if not getattr(backend, "parallel_forward", False):
            return 1
        return forward_lanes(self._settings.forward_lanes, description.device.startswith("cuda"))

    async def warm_up(self, descriptions: Mapping[str, ModelDescription]) -> None:
        """One real request per task through the whole path; SERVING is reported only after it."""
        raise NotImplementedError

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()

    def description(self, task: str = "") -> ModelDescription:
        """The loaded model of ``task`` (default: the main one); NotReady while loading."""
        try:
            return self._descriptions[task or self._main_task]
        except KeyError:
            raise NotReady(f"the {self.name} model is still loading") from None

    async def run(self, task: str, items: Sequence[Any], timeout_s: float | None = None) -> Sequence[Any]:
        """Submits prepared items to ``task``'s batcher (during warm-up too) and waits for outputs."""
        return await self._batchers[task].submit(items, timeout_s)

    async def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        d = self.description()
        return common_pb2.ModelInfo(
            model_id=d.model_id,
            revision=d.revision,
            embedding_dim=d.embedding_dim,
            modality=self.modality,
            device=d.device,
            dtype=d.dtype,
            max_batch_size=self._settings.max_batch_size,
            max_input_tokens=d.max_input_tokens,
            num_labels=len(d.labels),
            tasks=[
                common_pb2.TaskModel(
                    task=task,
                    model_id=t.model_id,
                    revision=t.revision,
                    num_labels=len(t.labels),
                    labels=t.labels if request.include_labels else (),
                )
                for task, t in self._descriptions.items()
            ],
        )
