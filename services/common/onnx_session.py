"""onnxruntime sessions (the audio models, text models compiled for CPU): execution provider from
the device setting, threads from the CPU budget.

``device`` auto picks onnxruntime's CUDA execution provider when the installed onnxruntime has
it (the ``onnxruntime-gpu`` build, which the CUDA image variant installs) and the CPU provider
otherwise; ``cuda`` / ``cuda:N`` insist on it. ONNX models run in the precision they were
exported in (float32 for the packaged YAMNet).
"""

from __future__ import annotations

import logging

from services.common.cpu_budget import available_cpus

_LOGGER = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def check_float32(dtype: str) -> None:
    if dtype not in ("auto", "float32"):
        raise ValueError(f"ONNX models run in float32; dtype {dtype!r} is not supported")


def providers_for(device: str) -> list[str | tuple[str, dict]]:
    """The execution providers for a device setting (auto, cpu, cuda, cuda:N)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu" or (device == "auto" and CUDA_PROVIDER not in available):
        return [CPU_PROVIDER]
    kind, _, index = ("cuda", "", "") if device == "auto" else device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    if CUDA_PROVIDER not in available:
        raise ValueError(
            f"device {device!r} requested but onnxruntime has no CUDA provider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu"
        )
    # The CUDA and cuDNN libraries of the nvidia-* wheels torch's CUDA build installs; without
    # torch imported first, onnxruntime only finds them when told to load them.
    onnxruntime.preload_dlls()
    return [(CUDA_PROVIDER, {"device_id": int(index or 0)}), CPU_PROVIDER]


def runs_on_gpu(device: str) -> bool:
    """Whether a session for this device setting runs on the CUDA provider."""
    return providers_for(device)[0] != CPU_PROVIDER


def create_session(model: bytes | str, device: str = "auto", threads: int = 0):
    """An InferenceSession over serialized model bytes (or a file path)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads if threads > 0 else available_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: dynamic batch sizes are expected, not warnings
    # Idle intra-op threads sleep instead of spinning: other threads share these CPUs (audio
    # decoders, a second forward lane). Spinning, a text service's lone two-thread passes were
    # faster but it did 10-15 % less at concurrency 8 and 32.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model, options, providers=providers_for(device))
    _LOGGER.info("onnxruntime providers: %s", ", ".join(session.get_providers()))
    return session


def device_of(session) -> str:
    """'cuda:N' when the session runs on the CUDA provider, else 'cpu'."""
    if session.get_providers()[0] == CUDA_PROVIDER:
        options = session.get_provider_options().get(CUDA_PROVIDER, {})
        return f"cuda:{options.get('device_id', 0)}"
    return "cpu"
