"""Image-text similarity math, and the rule for when the encoders share an embedding space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.backend import EncoderInfo

# CLIP's trained inverse temperature (exp(4.6052), where training clamps it): ModelInfo does not
# carry a checkpoint's own value, and every released CLIP checkpoint ends training at this clamp.
NATIVE_LOGIT_SCALE = 100.0
_UNPINNED_REVISIONS = ("", "main")
_LOCAL_DIGEST_PREFIX = "sha256:"


def same_checkpoint(text: EncoderInfo, image: EncoderInfo) -> bool:
    """Whether the text and vision towers were loaded from one checkpoint (a CLIP pair).

    Local checkpoints are identified by the digest of their weight files (revision
    ``sha256:...``), whatever path spelling each service was started with; hub checkpoints by
    their id, and also by revision when both services pinned one.
    """
    if text.revision.startswith(_LOCAL_DIGEST_PREFIX) and image.revision.startswith(_LOCAL_DIGEST_PREFIX):
        return text.revision == image.revision
    if text.model_id != image.model_id:
        return False
    pinned = text.revision not in _UNPINNED_REVISIONS and image.revision not in _UNPINNED_REVISIONS
    return not pinned or text.revision == image.revision


def native_space_reason(text: EncoderInfo, image: EncoderInfo) -> str:
    """Why the encoders' own embeddings can't be compared across modalities ('' when they can).

    Only two towers of one dual-encoder checkpoint embed into one space; a text model and an
    image model trained apart (MiniLM and EfficientNet) do not, even at equal dimensions.
    """
    if same_checkpoint(text, image) and text.embedding_dim == image.embedding_dim:
        return ""
    return (
        f"the text encoder ({_describe(text)}) and the vision encoder ({_describe(image)}) do not "
        "share an embedding space; serve both towers of one CLIP checkpoint, or name a trained "
        "alignment head in 'head'"
    )


def _describe(info: EncoderInfo) -> str:
    revision = f"@{info.revision}" if info.revision else ""
    return f"{info.model_id}{revision}, dim {info.embedding_dim}"


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] cosine similarities, float32."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    return (_normalise(a.astype(np.float64)) @ _normalise(b.astype(np.float64)).T).astype(np.float32)


def zero_shot(
    label_vectors: np.ndarray, images: np.ndarray, labels: Sequence[str], logit_scale: float
) -> list[list[tuple[str, float]]]:
    """Per image, every label with its softmax probability over the labels, best first."""
    logits = logit_scale * cosine_matrix(images, label_vectors).astype(np.float64)  # [images, labels]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return [[(labels[j], float(row[j])) for j in np.argsort(-row, kind="stable")] for row in probabilities]
