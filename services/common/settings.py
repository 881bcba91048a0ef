"""Typed, frozen settings per process: every option declared once, read from env and CLI.

Each field of a settings dataclass is one option. Its environment variable is the class's
``ENV_PREFIX`` plus the upper-cased field name (``MMSERVE_TEXT_MAX_BATCH_SIZE``), and its CLI
flag is the field name with dashes (``--max-batch-size``). Precedence: CLI > env > default.
Nothing here reads the environment at import time; ``load_settings`` is called once in main.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, secret: bool = False) -> Any:  # noqa: A002 - mirrors argparse's name
    """A settings field with its help text (shown by ``--help`` and in the README table); a
    ``secret`` one stays out of the settings' repr (and so out of logs and tracebacks)."""
    return dataclasses.field(default=default, metadata={"help": help}, repr=not secret)


# What lone_pass_threads is; each encoder's settings add why its default is what it is.
_LONE_PASS_THREADS = (
    "Intra-op CPU threads of a forward pass that starts while no other runs in the process (a lone "
    "request), never fewer than a lane's; 0: every lane's threads. "
)


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Options every gRPC service has."""

    ENV_PREFIX: typing.ClassVar[str] = "MMSERVE_"

    host: str = option("0.0.0.0", "Address the gRPC server binds.")
    port: int = option(0, "gRPC port (0 picks a free one).")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port (0 picks a free one, -1 disables).")
    log_level: str = option("INFO", "Log level: DEBUG, INFO, WARNING, ERROR.")
    grace_period_s: float = option(10.0, "On SIGTERM, how long in-flight requests may finish.")
    tls_cert_file: str = option("", "PEM server certificate; enables TLS with tls_key_file.")
    tls_key_file: str = option("", "PEM private key of tls_cert_file.")
    tls_client_ca_file: str = option("", "PEM CA bundle; when set, clients must present a cert (mTLS).")
    tls_allowed_clients: str = option(
        "",
        "With mTLS, comma-separated client identities (certificate DNS SAN or common name) accepted; "
        "others get PERMISSION_DENIED. Empty: any cert from tls_client_ca_file. TLS files are re-read "
        "when they change.",
    )
    auth_tokens_file: str = option(
        "",
        "File of caller tokens, one '<caller> <token>' per line; when set, every call but health checks "
        "must present one ('authorization: Bearer <token>'). Re-read when it changes.",
    )
    reflection: bool = option(False, "Serve gRPC server reflection (for grpcurl in development).")
    max_connection_age_s: float = option(
        30.0,
        "Close each client connection gracefully (GOAWAY) after about this long, so clients re-resolve "
        "DNS and new replicas join their rotation; 0 keeps connections forever.",
    )
    max_connection_age_grace_s: float = option(
        15.0, "How long calls in flight on a connection being closed for age may still finish."
    )
    max_concurrent_rpcs: int = option(
        512, "Most calls handled at once; more get RESOURCE_EXHAUSTED at once instead of piling up."
    )
    max_receive_message_bytes: int = option(64 * 1024 * 1024, "Largest request message accepted.")


@dataclasses.dataclass(frozen=True)
class EncoderSettings(ServerSettings):
    """Options shared by the encoder services (model, device, batching, input limits)."""

    model: str = option("", "Local model directory or hub id; empty means the packaged default.")
    revision: str = option("", "Hub revision (branch, tag or commit) when model is a hub id.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N; auto picks CUDA when available.")
    dtype: str = option("auto", "auto, float32, float16 or bfloat16; auto is float16 on CUDA.")
    torch_threads: int = option(
        0,
        "Intra-op CPU threads of each forward pass; 0: the CPUs this process may use (cgroup quota, "
        "affinity) shared among the forward lanes.",
    )
    forward_lanes: int = option(
        0,
        "Forward passes each model runs at once; 0: one per CPU this process may use on CPU (at most "
        "4; more CPUs give each lane more threads), one on a GPU. 1: one pass on torch_threads threads.",
    )
    lane_min_items: int = option(
        1,
        "Items that must be queued before a forward pass starts beside a running one; fewer wait for "
        "the next free lane.",
    )
    lone_pass_threads: int = option(
        1,
        _LONE_PASS_THREADS
        + "One by default (a lane's share): text on onnxruntime did ~8 % less at concurrency 8 with 0 (a "
        "pass beside a two-thread one runs three threads on two CPUs), though a lone sentence was ~1 ms "
        "faster.",
    )
    max_batch_size: int = option(32, "Most items in one forward pass.")
    max_wait_ms: float = option(0.0, "Extra wait for a fuller batch when the model is idle.")
    max_queue_size: int = option(1024, "Most items waiting; more are refused with RESOURCE_EXHAUSTED.")
    max_items_per_request: int = option(64, "Most items in one request.")
    warmup: bool = option(True, "Run one forward pass before reporting SERVING.")


@dataclasses.dataclass(frozen=True)
class TextSettings(EncoderSettings):
    ENV_PREFIX: typing.ClassVar[str] = "MMSERVE_TEXT_"

    port: int = option(50051, "gRPC port.")
    metrics_port: int = option(9101, "Prometheus /metrics HTTP port (-1 disables).")
    pooling: str = option("mean", "Sentence pooling: mean or cls.")
    cpu_runtime: str = option(
        "onnxruntime",
        "What runs the embedding and classification models on CPU: onnxruntime, torchscript (a "
        "trace) or eager (transformers as it is). Each is checked against the eager model when it "
        "loads and gives way to the next on a failure or a difference. One sentence on one thread: "
        "about 5.5 ms onnxruntime, 10 torchscript, 15 eager (MiniLM).",
    )
    max_batch_tokens: int = option(16384, "Token budget of one forward pass (padded length x items).")
    lane_min_items: int = option(
        2,
        "Items that must be queued before a forward pass starts beside a running one: a pass has a "
        "fixed cost that one sentence alone does not repay (on onnxruntime, 2 did 9-15 % more than 4 "
        "at concurrency 8 and as much at 32; 1 did less).",
    )
    max_text_chars: int = option(100_000, "Longest accepted text in characters; longer is refused.")
    max_request_chars_ner: int = option(
        100_000,
        "Most characters (all texts together) in one NER or classification request: NER reads every "
        "character, so this bounds how long one request can hold the NER worker.",
    )
    max_receive_message_bytes: int = option(8 * 1024 * 1024, "Largest request message accepted.")
    ner_model: str = option(
        "",
        "NER model: local dir or hub id of a token-classification model; empty means the packaged spaCy pipeline.",
    )
    ner_revision: str = option("", "Hub revision (commit, tag) of ner_model when it is a hub id.")
    classifier_model: str = option(
        "", "Text classifier: local dir or hub id of a sequence-classification model; empty serves none."
    )
    classifier_revision: str = option("", "Hub revision of classifier_model when it is a hub id.")
    top_k: int = option(5, "Default number of labels ClassifyText returns.")


@dataclasses.dataclass(frozen=True)
class VisionSettings(EncoderSettings):
    ENV_PREFIX: typing.ClassVar[str] = "MMSERVE_VISION_"

    port: int = option(50052, "gRPC port.")
    metrics_port: int = option(9102, "Prometheus /metrics HTTP port (-1 disables).")
    max_batch_size: int = option(16, "Most images in one forward pass.")
    max_items_per_request: int = option(32, "Most images in one request.")
    max_image_bytes: int = option(16 * 1024 * 1024, "Largest accepted encoded image in bytes.")
    max_image_pixels: int = option(40_000_000, "Largest accepted width x height, checked before decoding.")
    min_image_side_px: int = option(8, "Smallest accepted width or height in pixels.")
    top_k: int = option(5, "Default number of labels Classify returns.")
    lone_pass_threads: int = option(
        0,
        _LONE_PASS_THREADS
        + "0 by default: on onnxruntime a lone image through the gateway took 14.7-15.3 ms (p50) on two "
        "threads against 17.7-18.2 on one, with concurrency 8 unchanged.",
    )
    cpu_runtime: str = option(
        "onnxruntime",
        "What runs the image model's embedding on CPU: onnxruntime, torchscript (a trace) or eager; "
        "checked against the eager model when it loads, each gives way to the next on a failure or a "
        "difference (a transformers model's Classify stays eager). One image on one thread: "
        "EfficientNet-Lite0 about 11 ms onnxruntime, 33-38 eager (slower per image as batches grow); "
        "ViT-B/16 410-440 vs 530-560.",
    )
    decode_threads: int = option(2, "Threads that decode and preprocess images, off the event loop.")
    max_videos_per_request: int = option(4, "Most videos in one EmbedVideo request.")
    max_video_bytes: int = option(32 * 1024 * 1024, "Largest accepted encoded video in bytes.")
    max_video_seconds: float = option(600.0, "Longest accepted video in seconds (declared and decoded).")
    max_video_frames: int = option(64, "Most frames sampled from one video (each is embedded).")
    max_video_decoded_frames: int = option(
        36_000, "Most frames decoded from one video to reach the sampled ones; more is refused."
    )
    max_video_frame_pixels: int = option(
        8_294_400, "Largest accepted frame width x height (3840x2160), checked before decoding."
    )
    max_video_decoded_pixels: int = option(
        2_000_000_000,
        "Most pixels decoded to reach one video's sampled frames (frames decoded x frame size), planned "
        "from keyframes before decoding; about 10 s of one core.",
    )
    video_frames: int = option(8, "Frames EmbedVideo samples per video when the request names no sampling.")


@dataclasses.dataclass(frozen=True)
class AudioSettings(EncoderSettings):
    ENV_PREFIX: typing.ClassVar[str] = "MMSERVE_AUDIO_"

    port: int = option(50054, "gRPC port.")
    metrics_port: int = option(9104, "Prometheus /metrics HTTP port (-1 disables).")
    model: str = option(
        "",
        "Empty: the packaged YAMNet (ONNX); else a .onnx file taking a waveform, or a transformers "
        "audio model directory or hub id (wav2vec2, HuBERT, CLAP, an audio classifier).",
    )
    dtype: str = option(
        "auto", "auto, float32, float16 or bfloat16 (transformers models); ONNX runs float32."
    )
    torch_threads: int = option(
        0,
        "Intra-op CPU threads of each onnxruntime (or torch) forward pass; 0: the CPUs this process "
        "may use shared among the forward lanes.",
    )
    forward_lanes: int = option(
        1,
        "Forward passes run at once; audio's time goes to decoding (decode_threads), and two lanes "
        "measured no faster than one (c=32 +3 %, lone request p50 +10 %); 0: one per CPU.",
    )
    max_batch_size: int = option(64, "Most segments (YAMNet: 0.96 s patches) in one forward pass.")
    max_queue_size: int = option(16384, "Most segments waiting; more are refused with RESOURCE_EXHAUSTED.")
    max_items_per_request: int = option(8, "Most clips in one request.")
    max_audio_bytes: int = option(32 * 1024 * 1024, "Largest accepted encoded clip in bytes.")
    max_audio_seconds: float = option(600.0, "Longest accepted clip in seconds (declared and decoded).")
    min_sample_rate_hz: int = option(4000, "Lowest accepted sample rate of an encoded clip.")
    max_sample_rate_hz: int = option(192_000, "Highest accepted sample rate of an encoded clip.")
    max_channels: int = option(8, "Most channels of an accepted clip (they are averaged to mono).")
    segment_seconds: float = option(
        10.0, "Window length waveform models (ONNX, transformers) embed; a clip's embedding is their mean."
    )
    top_k: int = option(5, "Default number of labels Classify returns.")
    decode_threads: int = option(2, "Threads that decode, resample and featurise audio, off the event loop.")


@dataclasses.dataclass(frozen=True)
class FusionSettings(ServerSettings):
    ENV_PREFIX: typing.ClassVar[str] = "MMSERVE_FUSION_"

    port: int = option(50053, "gRPC port.")
    metrics_port: int = option(9103, "Prometheus /metrics HTTP port (-1 disables).")
    text_address: str = option(
        "localhost:50051", "Text encoder target; dns:///name:port spreads calls over replicas."
    )
    vision_address: str = option(
        "localhost:50052", "Vision encoder target; dns:///name:port spreads calls over replicas."
    )
    audio_address: str = option(
        "localhost:50054",
        "Audio encoder target (heads reading audio); empty: none, and such heads are refused.",
    )
    heads_dir: str = option("heads", "Directory of trained heads (safetensors + manifest JSON).")
    heads_reload_interval_s: float = option(2.0, "How often the heads directory is rescanned.")
    max_head_weights_bytes: int = option(
        512 * 1024 * 1024,
        "Largest head weights file loaded, checked before reading; larger heads are refused.",
    )
    default_deadline_s: float = option(10.0, "Deadline of downstream calls when the caller set none.")
    max_items_per_request: int = option(64, "Most inputs in one request.")
    max_candidate_labels: int = option(256, "Most zero-shot labels in one Similarity request.")
    head_cpu_runtime: str = option(
        "onnxruntime",
        "What runs the heads' decision layers (Predict): onnxruntime, torchscript (a trace) or eager; "
        "each head is checked against its eager module when it loads and gives way to the next on a "
        "failure or a difference. One row of a concat_mlp head: 0.07-0.24 ms onnxruntime, 0.33-0.75 eager. "
        "A compiled head holds a second copy of its weights.",
    )
    tls_ca_file: str = option("", "PEM CA bundle to verify the encoders' certificates; enables TLS to them.")
    tls_client_cert_file: str = option("", "PEM client certificate presented to the encoders (mTLS).")
    tls_client_key_file: str = option("", "PEM private key of tls_client_cert_file.")
    auth_token_file: str = option("", "File holding fusion's caller token, presented to the encoders.")


def settings_subset(cls: type[T], settings: object) -> T:
    """A dataclass of limits filled from the settings fields of the same names (one declaration
    of each limit: the settings; the limits class only picks what a component checks)."""
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


def env_name(cls: type, field_name: str) -> str:
    return f"{cls.ENV_PREFIX}{field_name.upper()}"


def env_names(cls: type) -> list[str]:
    """Every environment variable a settings class reads (the Helm chart is checked against it)."""
    return [env_name(cls, f.name) for f in dataclasses.fields(cls)]


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(field_type: Any):
    resolved = {"str": str, "int": int, "float": float, "bool": bool}.get(field_type, field_type)
    if resolved is bool:
        return _parse_bool
    return resolved


def load_settings(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Builds ``cls`` from defaults, then the environment, then CLI flags."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=f"python -m {cls.__module__}", description=cls.__doc__)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        convert = _converter(f.type)
        name = env_name(cls, f.name)
        default = f.default
        if name in environ:
            try:
                default = convert(environ[name])
            except ValueError as exc:
                raise SystemExit(f"invalid value for {name}: {exc}") from None
        values[f.name] = default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=convert,
            default=default,
            help=f"{f.metadata.get('help', '')} [env {name}, default {f.default!r}]",
        )
    parsed = parser.parse_args(list(argv) if argv is not None else [])
    values.update(vars(parsed))
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    """Options of the REST gateway."""

    ENV_PREFIX: typing.ClassVar[str] = "MMSERVE_GATEWAY_"

    host: str = option("0.0.0.0", "Address the HTTP server binds.")
    port: int = option(8080, "HTTP port (REST API, /metrics, /docs).")
    log_level: str = option("INFO", "Log level: DEBUG, INFO, WARNING, ERROR.")
    server: str = option(
        "gunicorn",
        "HTTP server of the Flask app: gunicorn (gthread workers; a request's head and each read of its "
        "body are time-bounded) or granian (Rust HTTP/1, about 0.3 ms less CPU per request; the head is "
        "time-bounded, but a body that stops arriving holds its thread until the client goes, so run "
        "it behind a proxy that buffers request bodies, as ingress-nginx does by default).",
    )
    workers: int = option(2, "Worker processes.")
    threads: int = option(32, "Threads per worker; requests mostly wait on gRPC, so many are cheap.")
    fusion_address: str = option("localhost:50053", "Fusion service target.")
    text_address: str = option("localhost:50051", "Text encoder target.")
    vision_address: str = option("localhost:50052", "Vision encoder target.")
    audio_address: str = option("localhost:50054", "Audio encoder target.")
    api_keys: str = option(
        "", "Comma-separated API keys; when set, /v1 routes need 'Authorization: Bearer <key>'.", secret=True
    )
    model_aliases: str = option(
        "",
        "Other names clients may give a served model ('alias=model_id', comma-separated, e.g. "
        "text-embedding-3-small=sentence-transformers/all-MiniLM-L6-v2); any other unknown name is a 404.",
    )
    require_api_keys: bool = option(
        False, "Refuse to start without at least one API key (the chart sets it when keys are configured)."
    )
    max_in_flight_bytes: int = option(
        96 * 1024 * 1024,
        "Request bodies one worker handles at once, in bytes; past it requests get 429 (a request costs "
        "about 3.5x its body in memory).",
    )
    max_body_bytes: int = option(32 * 1024 * 1024, "Largest accepted request body in bytes.")
    max_items_per_request: int = option(64, "Most inputs in one request.")
    deadline_s: float = option(10.0, "Deadline of each upstream gRPC call.")
    text_merge_in_flight: int = option(
        4,
        "Merged text-embedding calls one worker keeps out at once: requests arriving meanwhile queue and "
        "go out as one call (a lone request goes at once); 0 sends every request's own call.",
    )
    text_merge_max_items: int = option(
        32, "Most texts in one merged text-embedding call (at most the text service's max_items_per_request)."
    )
    body_read_timeout_s: float = option(
        10.0,
        "Most time a request body may take to arrive (and longest silence within it, the request line "
        "and headers included); a slower client gets 408 (or, mid-headers, a closed connection), so "
        "stalled clients can't hold the worker threads.",
    )
    retry_backoff_ms: float = option(
        50.0, "Wait before the one retry of an idempotent call that got UNAVAILABLE."
    )
    tls_ca_file: str = option("", "PEM CA bundle to verify the backends' certificates; enables TLS to them.")
    tls_client_cert_file: str = option("", "PEM client certificate presented to the backends (mTLS).")
    tls_client_key_file: str = option("", "PEM private key of tls_client_cert_file.")
    auth_token_file: str = option("", "File holding the gateway's caller token, presented to the services.")
    image_url_allowlist: str = option(
        "", "Comma-separated hosts images may be fetched from by URL; empty disables URL fetching."
    )
    image_url_timeout_s: float = option(5.0, "Timeout of one image URL fetch.")
    image_url_max_bytes: int = option(16 * 1024 * 1024, "Largest image fetched by URL.")
    image_url_request_max_bytes: int = option(
        64 * 1024 * 1024, "Most bytes all image URLs of one request may fetch together."
    )
    image_url_request_timeout_s: float = option(
        8.0, "Most wall-clock time all image URLs of one request may take together."
    )


# Each service's settings by the name the launcher, the chart and the images give the service.
SERVICE_SETTINGS: dict[str, type] = {
    "text": TextSettings,
    "vision": VisionSettings,
    "audio": AudioSettings,
    "fusion": FusionSettings,
    "gateway": GatewaySettings,
}
