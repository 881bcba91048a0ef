"""Image-text similarity math, and the rule for when the encoders share an embedding space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.fusion.clients import EncoderInfo


def native_space_reason(infos: Mapping[str, EncoderInfo | None]) -> str:
    """Why the encoders' own embeddings can't be compared across modalities ('' when they can).

    They share a space only when both towers come from the same checkpoint (a CLIP pair): the
    same model id and revision, and the same embedding dimension.
    """
    text, image = infos.get("text"), infos.get("image")
    if text is None or image is None:
        missing = " and ".join(m for m, info in (("text", text), ("vision", image)) if info is None)
        return f"cannot compare texts and images: the {missing} encoder is not available"
    if (text.model_id, text.revision, text.embedding_dim) != (image.model_id, image.revision, image.embedding_dim):
        return (
            f"the text encoder ({text.model_id}, dim {text.embedding_dim}) and the vision encoder "
            f"({image.model_id}, dim {image.embedding_dim}) do not share an embedding space; serve both "
            "towers of one CLIP checkpoint, or name a trained alignment head in 'head'"
        )
    return ""


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosine_matrix(texts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """[len(texts), len(images)] cosine similarities."""
    if len(texts) == 0 or len(images) == 0:
        return np.zeros((len(texts), len(images)), dtype=np.float32)
    return (_normalise(texts) @ _normalise(images).T).astype(np.float32)


def zero_shot(
    label_vectors: np.ndarray, images: np.ndarray, labels: Sequence[str], logit_scale: float
) -> list[list[tuple[str, float]]]:
    """Per image, every label with its softmax probability, best first."""
    logits = logit_scale * cosine_matrix(images, label_vectors)  # [images, labels]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return [
        [(labels[j], float(row[j])) for j in np.argsort(-row, kind="stable")]
        for row in probabilities
    ]
