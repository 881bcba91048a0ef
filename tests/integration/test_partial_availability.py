"""Partial availability with the real processes: with every vision process gone, the gateway stays
ready, text keeps working, and image routes answer 503 at once in the error shape.

The text and audio services are the shared session ones; vision, fusion and the gateway are this test's own,
so killing vision leaves the other tests' services alone.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from scripts.stack import ServiceProcess, start_service
from tests.support.traffic import Outcome, post_json

pytestmark = pytest.mark.slow

FAST_S = 2.0  # far below the gateway's 10 s deadline: a dead backend must not be waited for


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE = {"images": [png_b64()]}
TEXT = {"texts": ["partial availability"]}


@pytest.fixture
def own_stack(
    text_service: ServiceProcess, audio_service: ServiceProcess, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    started: list[ServiceProcess] = []
    heads = tmp_path / "heads"
    heads.mkdir()
    try:
        vision = start_service("vision", log_dir=tmp_path)
        started.append(vision)
        fusion_args = ["--text-address", text_service.address, "--vision-address", vision.address,
                       "--heads-dir", str(heads)]  # fmt: skip
        fusion = start_service("fusion", args=fusion_args, log_dir=tmp_path)
        started.append(fusion)
        gateway_args = ["--text-address", text_service.address, "--vision-address", vision.address,
                        "--fusion-address", fusion.address, "--audio-address", audio_service.address]  # fmt: skip
        gateway = start_service("gateway", args=gateway_args, log_dir=tmp_path)
        started.append(gateway)
        yield {"vision": vision, "fusion": fusion, "gateway": gateway}
    finally:
        for service in reversed(started):
            service.stop()


def readiness(url: str) -> Outcome:
    return post_json(url + "/readyz", None, timeout_s=5)


def test_gateway_stays_ready_and_serves_text_with_vision_gone(own_stack: dict[str, ServiceProcess]) -> None:
    url = own_stack["gateway"].url
    ready = readiness(url)
    assert (ready.status, json.loads(ready.body)) == (
        200,
        {
            "status": "ready",
            "backends": {"text": "SERVING", "vision": "SERVING", "fusion": "SERVING", "audio": "SERVING"},
        },
    )
    assert post_json(url + "/v1/embed/image", IMAGE).status == 200

    vision = own_stack["vision"]
    killed_at = time.monotonic()
    vision.process.send_signal(signal.SIGKILL)  # as when every vision pod is lost
    vision.process.wait()

    # Readiness stays 200 and names the backend that is gone.
    while True:
        ready = readiness(url)
        assert ready.status == 200, ready.body
        body = json.loads(ready.body)
        if body["backends"]["vision"] != "SERVING" or time.monotonic() - killed_at > 10:
            break
        time.sleep(0.1)
    noticed_s = time.monotonic() - killed_at
    assert body["status"] == "ready"
    assert body["backends"]["text"] == "SERVING" and body["backends"]["fusion"] == "SERVING"
    assert body["backends"]["vision"] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, body
    assert ready.seconds < 1.0, "/readyz must answer within a kubelet probe's default 1 s timeout"

    # Image routes: a fast 503 in the documented error shape, with Retry-After.
    image_outcomes = [post_json(url + "/v1/embed/image", IMAGE) for _ in range(5)]
    for outcome in image_outcomes:
        assert (outcome.status, outcome.retry_after) == (503, "1")
        assert json.loads(outcome.body) == {
            "error": {
                "code": 503,
                "status": "UNAVAILABLE",
                "message": "the vision service is unavailable; retry later",
            }
        }
        assert outcome.seconds < FAST_S, outcome.seconds

    # Text keeps working, on its own route and on the OpenAI-compatible one.
    text_outcomes = [post_json(url + "/v1/embed/text", TEXT) for _ in range(10)]
    assert [o.status for o in text_outcomes] == [200] * 10
    assert len(json.loads(text_outcomes[0].body)["embeddings"][0]) > 0
    assert post_json(url + "/v1/embeddings", {"input": ["still here"]}).status == 200
    assert readiness(url).status == 200
    print(
        f"vision killed: /readyz reported it {json.loads(readiness(url).body)['backends']['vision']} "
        f"{noticed_s * 1000:.0f} ms later and stayed 200; image 503 in at most "
        f"{max(o.seconds for o in image_outcomes) * 1000:.0f} ms; text 200 in at most "
        f"{max(o.seconds for o in text_outcomes) * 1000:.0f} ms"
    )
