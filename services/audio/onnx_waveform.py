"""Any ONNX audio encoder that takes a waveform, from a ``.onnx`` file (MMSERVE_AUDIO_MODEL).

The contract, checked at load:

- one float input of shape ``[batch, samples]``: mono samples in [-1, 1] at 16 kHz, or at the
  rate the model's metadata names (``metadata_props`` key ``sample_rate_hz``); e.g. a wav2vec2
  or HuBERT encoder exported with ``optimum`` / ``torch.onnx``;
- its first output ``[batch, dim]`` (a pooled embedding) or ``[batch, frames, dim]`` (hidden
  states, averaged over frames).

Clips are cut into windows of ``segment_seconds``; the clip embedding is the mean of the
windows' embeddings, L2-normalised. Such a model has no labels: Classify answers
FAILED_PRECONDITION. Weights in external data files are read from beside the ``.onnx`` file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.audio.backend import SegmentOutputs
from services.audio.features import Segment, window_segments
from services.common.backend import ModelDescription, loads_once
from services.common.errors import NotReady
from services.common.onnx_session import check_float32, create_session, device_of

_LOGGER = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATE_HZ = 16_000
SAMPLE_RATE_KEY = "sample_rate_hz"


def file_digest(path: Path, length: int = 12) -> str:
    digest = hashlib.sha256()
    for part in sorted([path, *path.parent.glob(f"{path.stem}*.data")]):
        with part.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]


class OnnxWaveformModel:
    """A waveform-in, embedding-out ONNX graph (AudioModel; see the module docstring)."""

    def __init__(
        self,
        path: str,
        segment_seconds: float = 10.0,
        device: str = "auto",
        dtype: str = "auto",
        threads: int = 0,
    ) -> None:
        check_float32(dtype)
        self._path = Path(path).expanduser()
        self._segment_s = segment_seconds
        self._device = device
        self._threads = threads
        self._session = None
        self._input = ""
        self.sample_rate_hz = DEFAULT_SAMPLE_RATE_HZ
        self.labels: list[str] = []

    @loads_once
    def load(self) -> ModelDescription:
        if not self._path.is_file():
            raise FileNotFoundError(f"ONNX model {self._path} does not exist")
        self._session = create_session(str(self._path), self._device, self._threads)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].type != "tensor(float)":
            raise ValueError(
                f"{self._path.name}: expected one float input [batch, samples], got "
                f"{[(i.name, i.type, i.shape) for i in inputs]}"
            )
        if len(outputs[0].shape) not in (2, 3):
            raise ValueError(f"{self._path.name}: first output must be [batch, dim] or [batch, frames, dim]")
        self._input = inputs[0].name
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.sample_rate_hz = int(metadata.get(SAMPLE_RATE_KEY, DEFAULT_SAMPLE_RATE_HZ))
        probe = self.forward([np.zeros(self.sample_rate_hz, np.float32)]).embeddings
        _LOGGER.info(
            "loaded ONNX audio model %s (%d-d, %d Hz)", self._path, probe.shape[1], self.sample_rate_hz
        )
        return ModelDescription(
            model_id=self._path.stem,
            revision=f"sha256:{file_digest(self._path)}",
            embedding_dim=int(probe.shape[1]),
            device=device_of(self._session),
            dtype="float32",
        )

    def segments(self, waveform: np.ndarray) -> list[Segment]:
        return window_segments(waveform, self.sample_rate_hz, self._segment_s)

    def segment_cost(self, data: np.ndarray) -> int:
        return 1

    def forward(self, batch: Sequence[np.ndarray]) -> SegmentOutputs:
        if self._session is None:
            raise NotReady("the audio model is not loaded")
        rows: list[np.ndarray | None] = [None] * len(batch)
        # Equal lengths run together; windows are equal except a clip's last one, so this is
        # nearly always one run, and nothing is ever padded.
        by_length: dict[int, list[int]] = {}
        for index, data in enumerate(batch):
            by_length.setdefault(len(data), []).append(index)
        for indices in by_length.values():
            waves = np.stack([batch[i] for i in indices]).astype(np.float32, copy=False)
            (hidden,) = self._session.run([self._session.get_outputs()[0].name], {self._input: waves})
            pooled = hidden.mean(axis=1) if hidden.ndim == 3 else hidden
            for i, row in zip(indices, pooled, strict=True):
                rows[i] = row
        return SegmentOutputs(embeddings=np.stack(rows).astype(np.float32), scores=None)
