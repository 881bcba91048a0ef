"""On-disk embedding cache, so re-training a head does not re-run the encoders.

Layout: ``<root>/<encoder key>/<hh>/<content sha256>.npy`` with an ``encoder.json`` per encoder
directory saying which model it holds. The encoder key hashes modality, model id, revision and
dimension, so embeddings of different models (or revisions) never mix. Entries are written
atomically; an unreadable or mis-shaped entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.common.backend import EncoderInfo
from training.embedders import Embedder, embed_with, encoder_info

_LOGGER = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".cache/embeddings")


def content_key(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def encoder_key(modality: str, info: EncoderInfo) -> str:
    ident = "\0".join([modality, info.model_id, info.revision, str(info.embedding_dim)])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


class EmbeddingCache:
    """Vectors of one encoder, keyed by the sha256 of the input's bytes."""

    def __init__(self, root: Path | str, modality: str, info: EncoderInfo) -> None:
        self.info = info
        self.directory = Path(root) / encoder_key(modality, info)
        self.directory.mkdir(parents=True, exist_ok=True)
        description = self.directory / "encoder.json"
        if not description.exists():
            description.write_text(
                json.dumps(
                    {
                        "modality": modality,
                        "model_id": info.model_id,
                        "revision": info.revision,
                        "embedding_dim": info.embedding_dim,
                    },
                    indent=2,
                )
                + "\n"  # fmt: skip
            )

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            vector = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _LOGGER.warning("ignoring unreadable cache entry %s: %s", path, exc)
            return None
        if vector.shape != (self.info.embedding_dim,) or vector.dtype != np.float32:
            _LOGGER.warning("ignoring cache entry %s of shape %s %s", path, vector.shape, vector.dtype)
            return None
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
        tmp.replace(path)


class CachedEmbedder:
    """Wraps an Embedder: identical inputs are embedded once, ever (per encoder model + revision).

    Each modality's cache opens on first use, so a head without audio never loads an audio model."""

    def __init__(self, inner: Embedder, root: Path | str = DEFAULT_CACHE_DIR) -> None:
        self.inner = inner
        self._root = root
        self._caches: dict[str, EmbeddingCache] = {}
        self.hits = 0
        self.misses = 0

    @property
    def text_info(self) -> EncoderInfo:
        return self.inner.text_info

    @property
    def image_info(self) -> EncoderInfo:
        return self.inner.image_info

    @property
    def audio_info(self) -> EncoderInfo:
        return encoder_info(self.inner, "audio")

    def _cache(self, modality: str) -> EmbeddingCache:
        if modality not in self._caches:
            self._caches[modality] = EmbeddingCache(self._root, modality, encoder_info(self.inner, modality))
        return self._caches[modality]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed([t.encode("utf-8") for t in texts], texts, "text")

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self._embed(list(images), images, "image")

    def embed_audio(self, clips: Sequence[bytes]) -> np.ndarray:
        return self._embed(list(clips), clips, "audio")

    def _embed(self, contents: list[bytes], items: Sequence, modality: str) -> np.ndarray:
        cache = self._cache(modality)
        keys = [content_key(c) for c in contents]
        found: dict[str, np.ndarray] = {}
        missing: dict[str, int] = {}  # key -> index of its first occurrence
        for index, key in enumerate(keys):
            if key in found or key in missing:
                continue
            vector = cache.get(key)
            if vector is None:
                missing[key] = index
            else:
                found[key] = vector
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            computed = embed_with(self.inner, modality, [items[i] for i in missing.values()])
            for key, vector in zip(missing, computed, strict=True):
                cache.put(key, vector)
                found[key] = vector
        out = np.empty((len(keys), cache.info.embedding_dim), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = found[key]
        return out

    def close(self) -> None:
        self.inner.close()
