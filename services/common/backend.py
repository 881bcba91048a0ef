"""The one interface every model backend implements, and the registry of backend factories.

Backends hold torch and the model; they never import generated protobuf code. Servicers
convert protos to plain Python values and call backends only through a DynamicBatcher, so
``process`` always runs on the batcher's worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

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


class BatchBackend(Protocol[ItemT, OutT]):
    """A model that processes a batch of prepared items in one forward pass."""

    def load(self) -> ModelDescription:
        """Loads weights (blocking); called once before the service reports SERVING."""
        ...

    def process(self, items: Sequence[ItemT]) -> Sequence[OutT]:
        """One forward pass; returns exactly one output per item, in order."""
        ...

    def item_cost(self, item: ItemT) -> int:
        """Relative cost of one item, for the batcher's budget (tokens for text, 1 for images)."""
        ...


@dataclass
class BackendRegistry(Generic[ItemT, OutT]):
    """Explicit name -> factory map; a service picks its backend by settings, never by magic."""

    factories: dict[str, Callable[..., Any]]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            factory = self.factories[name]
        except KeyError:
            known = ", ".join(sorted(self.factories))
            raise ValueError(f"unknown backend {name!r}; known: {known}") from None
        return factory(*args, **kwargs)
