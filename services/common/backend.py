"""The one shape of a model backend, and what a loaded model says about itself.

Every model an encoder service runs (text embedding, NER, text classification, image embedding,
image classification, ...) is a ``ModelBackend``: ``load`` once, then ``process`` batches of
prepared items on the batcher's worker thread. ``item_cost`` weighs one item for the batcher's
budget (tokens for text, 1 for images). Backends hold torch and the model; they never import
generated protobuf code. Servicers convert protos to plain values and call backends only
through a DynamicBatcher, so ``process`` never runs on the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

ItemT = TypeVar("ItemT", contravariant=True)
OutT = TypeVar("OutT", covariant=True)


@dataclass(frozen=True)
class ModelDescription:
    """What a loaded model is; reported by GetModelInfo and recorded in trained heads."""

    model_id: str
    revision: str
    embedding_dim: int
    device: str
    dtype: str
    max_input_tokens: int = 0
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncoderInfo:
    """Which encoder produced a set of embeddings: what heads record and are checked against."""

    model_id: str
    revision: str
    embedding_dim: int

    @classmethod
    def of(cls, described: Any) -> EncoderInfo:
        """From anything with these three fields: a ModelDescription or a ModelInfo message."""
        return cls(described.model_id, described.revision, int(described.embedding_dim))

    def produced(self, model_id: str, dim: int) -> bool:
        """Whether an Embed reply (its model id, its row width) came from this model."""
        return dim == self.embedding_dim and (not model_id or model_id == self.model_id)


class ModelBackend(Protocol[ItemT, OutT]):
    """A model that processes a batch of prepared items in one forward pass."""

    def load(self) -> ModelDescription:
        """Loads weights (blocking); called before the service reports SERVING."""
        ...

    def process(self, items: Sequence[ItemT]) -> Sequence[OutT]:
        """One forward pass; returns exactly one output per item, in order."""
        ...

    def item_cost(self, item: ItemT) -> int:
        """Relative cost of one item for the batcher's budget (tokens for text, 1 for images)."""
        ...


# A backend whose ``process`` may run on several threads at once sets ``parallel_forward = True``;
# its batcher then runs up to the service's ``forward_lanes`` batches at once. Without it (NER's
# spaCy pipeline), batches run one at a time.


LoadT = TypeVar("LoadT", bound=Callable[[Any], ModelDescription])


def loads_once(load: LoadT) -> LoadT:
    """Makes ``load`` idempotent: one model can back several tasks (image embedding and
    classification share one network), and each task's backend loads it."""

    @functools.wraps(load)
    def load_once(self: Any) -> ModelDescription:
        loaded = self.__dict__.get("_loaded_description")
        if loaded is None:
            loaded = self.__dict__["_loaded_description"] = load(self)
        return loaded

    return load_once  # type: ignore[return-value]
