"""One REST request, traced across every process: gateway -> fusion -> text and vision, exported
over OTLP/HTTP to a real receiver in the test and checked span by span."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from mmserve.v1 import common_pb2, text_pb2_grpc, vision_pb2_grpc
from scripts.stack import ServiceProcess, start_service
from services.fusion.heads import save_head
from services.fusion.strategies import build_model
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.traffic import post_json

pytestmark = pytest.mark.slow

SERVER, CLIENT = 2, 3  # OTLP SpanKind values


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def write_untrained_head(heads_dir: Path, text: common_pb2.ModelInfo, image: common_pb2.ModelInfo) -> None:
    """A ``match`` head for the encoders being served; its answers do not matter here, its hops do."""
    torch.manual_seed(0)
    config = {"fused_dim": 8, "hidden_dim": 8}
    save_head(
        heads_dir / "match",
        build_model("weighted_sum", text.embedding_dim, image.embedding_dim, config, num_outputs=2),
        strategy="weighted_sum",
        input_dims={"text": text.embedding_dim, "image": image.embedding_dim},
        config=config,
        encoders={
            "text": {"model_id": text.model_id, "revision": text.revision},
            "image": {"model_id": image.model_id, "revision": image.revision},
        },
        labels=("no", "yes"),
    )


def model_info(service: ServiceProcess, stub: type) -> common_pb2.ModelInfo:
    with grpc.insecure_channel(service.address) as channel:
        return stub(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)


@pytest.fixture(scope="module")
def traced_gateway(receiver: OtlpReceiver, tmp_path_factory) -> Iterator[str]:
    heads = tmp_path_factory.mktemp("traced-heads")
    logs = tmp_path_factory.mktemp("traced-logs")
    # Every process exports to the receiver; a short batch delay so spans arrive within the test.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    started: list[ServiceProcess] = []
    try:
        text = start_service("text", env=env, log_dir=logs, wait=False)
        vision = start_service("vision", env=env, log_dir=logs, wait=False)
        started += [text, vision]
        text.wait_ready(300)
        vision.wait_ready(300)
        write_untrained_head(
            heads,
            model_info(text, text_pb2_grpc.TextEncoderServiceStub),
            model_info(vision, vision_pb2_grpc.VisionEncoderServiceStub),
        )
        fusion = start_service(
            "fusion",
            args=[
                "--text-address",
                text.address,
                "--vision-address",
                vision.address,
                "--heads-dir",
                str(heads),
            ],
            env=env,
            log_dir=logs,
        )
        started.append(fusion)
        gateway = start_service(
            "gateway",
            args=["--fusion-address", fusion.address, "--text-address", text.address,
                  "--vision-address", vision.address, "--workers", "1"],
            env=env,
            log_dir=logs,
        )  # fmt: skip
        started.append(gateway)
        yield gateway.url
    finally:
        for service in reversed(started):
            service.stop()


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def spans_of_trace(receiver: OtlpReceiver, request_id: str, timeout_s: float = 20.0) -> list[ReceivedSpan]:
    """The spans of the trace whose gateway span carries ``request_id``, once every process's
    part has arrived (the encoders' batch spans are the last to be exported)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = receiver.spans()
        roots = [
            s
            for s in spans
            if s.attributes.get("mmserve.request_id") == request_id and s.service == "mmserve-gateway"
        ]
        trace = [s for s in spans if roots and s.trace_id == roots[0].trace_id]
        services = {s.service for s in trace}
        forwards = [s for s in trace if s.name == "batch.forward"]
        if {"mmserve-gateway", "mmserve-fusion", "mmserve-text", "mmserve-vision"} <= services and len(
            forwards
        ) >= 2:
            return trace
        if time.monotonic() > deadline:
            raise AssertionError(
                f"trace incomplete after {timeout_s}s: {sorted(services)}, {len(spans)} spans in all"
            )
        time.sleep(0.2)


def render_tree(trace: list[ReceivedSpan]) -> str:
    """The trace as an indented tree with each span's duration (the README shows one)."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(trace, key=lambda s: s.start_ns):
        children.setdefault(span.parent_id, []).append(span)
    lines: list[str] = []

    def walk(parent_id: str, depth: int) -> None:
        for span in children.get(parent_id, []):
            kind = {SERVER: " (server)", CLIENT: " (client)"}.get(span.kind, "")
            batch = span.attributes.get("mmserve.batch.items")
            extra = f"  items={batch} requests={span.attributes['mmserve.batch.requests']}" if batch else ""
            label = f"{'  ' * depth}{span.name}{kind}{extra}"
            lines.append(f"{span.service:<16} {label:<64} {span.milliseconds:6.1f} ms")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def test_one_request_is_one_trace_across_every_hop(traced_gateway: str, receiver: OtlpReceiver) -> None:
    request_id = "trace-me-0001"
    reply = post_json(
        traced_gateway + "/v1/predict",
        {"head": "match", "text": "a red circle", "image": png_b64()},
        headers={"X-Request-ID": request_id},
    )
    assert reply.status == 200, reply.body
    trace = spans_of_trace(receiver, request_id)
    by_id = {s.span_id: s for s in trace}
    print("\n" + render_tree(trace))
    assert len({s.trace_id for s in trace}) == 1

    def parent(span: ReceivedSpan) -> ReceivedSpan:
        assert span.parent_id in by_id, f"{span.service} {span.name} has no parent in the trace"
        return by_id[span.parent_id]

    # gateway (HTTP server) -> gateway client call -> fusion server span
    http = next(s for s in trace if s.service == "mmserve-gateway" and s.kind == SERVER)
    assert http.parent_id == "" and http.attributes["mmserve.request_id"] == request_id
    fusion_server = next(s for s in trace if s.service == "mmserve-fusion" and s.kind == SERVER)
    assert fusion_server.name == "/mmserve.v1.FusionService/Predict"
    gateway_client = parent(fusion_server)
    assert (gateway_client.service, gateway_client.kind) == ("mmserve-gateway", CLIENT)
    assert parent(gateway_client).span_id == http.span_id
    assert fusion_server.attributes["mmserve.request_id"] == request_id

    # fusion -> text and vision, each a client span under fusion's server span
    for service, method in (
        ("mmserve-text", "TextEncoderService/Embed"),
        ("mmserve-vision", "VisionEncoderService/Embed"),
    ):
        server = next(s for s in trace if s.service == service and s.kind == SERVER)
        assert server.name.endswith(method), server.name
        client = parent(server)
        assert (client.service, client.kind) == ("mmserve-fusion", CLIENT)
        assert parent(client).span_id == fusion_server.span_id
        # the encoder's own steps: queue wait and the shared forward pass, with the batch's size
        steps = {s.name: s for s in trace if s.service == service and s.parent_id == server.span_id}
        assert {"batch.queue", "batch.forward"} <= set(steps), sorted(steps)
        forward = steps["batch.forward"].attributes
        assert forward["mmserve.task"] == "embed" and forward["mmserve.batch.items"] >= 1
        assert forward["mmserve.batch.requests"] >= 1
    decode = next(s for s in trace if s.name == "vision.decode_preprocess")
    assert decode.service == "mmserve-vision" and decode.attributes["mmserve.items"] == 1
