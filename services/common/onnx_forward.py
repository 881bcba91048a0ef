"""A model's forward pass on onnxruntime's CPU provider (the ``onnxruntime`` CPU runtime of
services/common/compiled.py).

The model is exported in memory (torch's TorchScript-based ONNX exporter) with the axes its
caller names dynamic (a text model's batch and sequence, an image model's batch). On one thread
onnxruntime ran MiniLM in less CPU than the TorchScript trace, in-process: 5.5 vs 10.3 ms for one
sentence, 4.6 vs 5.5 and 4.6 vs 6.2 ms per sentence at 8 and 32.

A session's intra-op thread count is fixed when it is made, while each forward lane sets its
count per pass (services.common.device.PassThreads): one session per count the process uses,
made at load and shared by the lanes (``run`` is thread-safe). A one-thread session runs on its
caller's thread. The text service runs a lone pass on one thread too (lone_pass_threads, 1): with
a second thread lone sentences were ~1 ms faster, but passes that overlapped one another ran three
threads on two CPUs, and concurrency 8 did ~8 % less. Images gain more from a second thread, and
the vision service gives a lone pass both (0).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from services.common.device import current_pass_threads, pass_thread_counts
from services.common.onnx_session import create_session

_OPSET = 17


def onnx_forward(
    positional: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Callable[..., torch.Tensor]:
    """``positional`` (inputs in ``names`` order -> one output tensor, its first axis the batch)
    as onnxruntime sessions."""
    model = _export(positional, example, names, dynamic_axes)
    sessions = {threads: create_session(model, "cpu", threads) for threads in pass_thread_counts()}
    fewest = sessions[min(sessions)]  # for a count set after load, which no session was made for
    # The exporter drops inputs the model ignores (a tokenizer's token_type_ids, say).
    wanted = {i.name for i in fewest.get_inputs()}

    def forward(*tensors: torch.Tensor) -> torch.Tensor:
        session = sessions.get(current_pass_threads(), fewest)
        feeds = {n: tensor.numpy() for n, tensor in zip(names, tensors, strict=True) if n in wanted}
        return torch.from_numpy(session.run(None, feeds)[0])

    return forward


def _export(
    positional: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> bytes:
    buffer = io.BytesIO()
    axes = {name: dict(axes) for name, axes in dynamic_axes.items()}
    with _attention_as_plain_ops():
        torch.onnx.export(
            positional, example, buffer, input_names=list(names), output_names=["output"],
            dynamic_axes={**axes, "output": {0: "batch"}}, opset_version=_OPSET, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


@contextlib.contextmanager
def _attention_as_plain_ops() -> Iterator[None]:
    """Without grad, ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take a fused fast
    path (``aten::_native_multi_head_attention``) that no ONNX opset has; their plain ops export.
    The switch is process-wide, so a pass running meanwhile takes the plain ops too: the same
    answer, a little slower, for the moment of an export."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
