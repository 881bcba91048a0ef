"""Every REST route through the four real processes and the default real models."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from scripts.stack import ServiceProcess, start_service
from tests.support.metrics import sample_value, scrape
from tests.support.polling import eventually, settled
from tests.support.traffic import post_json

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS_CONFIG = REPO_ROOT / "tests" / "support" / "schemathesis.toml"

pytestmark = pytest.mark.slow


def png_bytes(colour=(220, 30, 30), size=(96, 96)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


PNG_B64 = base64.b64encode(png_bytes()).decode()


@pytest.fixture(scope="module")
def gateway(gateway_service: ServiceProcess, demo_heads: Path, heads_dir: Path) -> str:
    for name in ("match", "align"):
        shutil.copytree(demo_heads / name, heads_dir / name, dirs_exist_ok=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = json.loads(post_json(gateway_service.url + "/v1/heads", None).body or b"{}").get("heads", [])
        if {"match", "align"} <= {h["name"] for h in listed}:
            break
        time.sleep(0.2)
    return gateway_service.url


def ok(url: str, payload: dict | None) -> dict:
    outcome = post_json(url, payload)
    assert outcome.status == 200, outcome.body[:300]
    return json.loads(outcome.body)


def test_text_image_and_openai_embeddings_agree(gateway: str) -> None:
    texts = ["a photo of a cat", "stock markets fell sharply"]
    direct = ok(gateway + "/v1/embed/text", {"texts": texts})
    assert len(direct["embeddings"]) == 2 and len(direct["embeddings"][0]) == 384
    assert direct["truncated"] == [False, False] and all(n > 2 for n in direct["token_counts"])

    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    text_model = next(m.id for m in client.models.list() if m.modality == "text" and m.task == "embed")
    assert text_model == direct["model"]
    reply = client.embeddings.create(model=text_model, input=texts)  # the client asks for base64
    vectors = np.array([d.embedding for d in reply.data])
    np.testing.assert_allclose(vectors, np.array(direct["embeddings"]), atol=1e-6)
    assert reply.usage.prompt_tokens == sum(direct["token_counts"])
    as_floats = client.embeddings.create(model=text_model, input="a photo of a cat", encoding_format="float")
    np.testing.assert_allclose(as_floats.data[0].embedding, direct["embeddings"][0], atol=1e-6)

    with pytest.raises(openai.NotFoundError) as unknown:  # a name no model answers to
        client.embeddings.create(model="text-embedding-3-small", input="a photo of a cat")
    assert unknown.value.body["reason"] == "model_not_found"
    mixed = ok(gateway + "/v1/embeddings", {"input": ["a cat", {"type": "image", "image": PNG_B64}]})
    assert [len(d["embedding"]) for d in mixed["data"]] == [384, 1280]
    image = ok(gateway + "/v1/embed/image", {"images": [f"data:image/png;base64,{PNG_B64}"]})
    np.testing.assert_allclose(mixed["data"][1]["embedding"], image["embeddings"][0], atol=1e-6)


def test_multipart_upload_equals_json_base64(gateway: str) -> None:
    boundary = "mmserve-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="red.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        gateway + "/v1/embed/image",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        uploaded = json.loads(response.read())
    as_json = ok(gateway + "/v1/embed/image", {"images": [PNG_B64]})
    np.testing.assert_allclose(uploaded["embeddings"], as_json["embeddings"], atol=1e-6)


def test_classify_ner_models_and_heads(gateway: str) -> None:
    classified = ok(gateway + "/v1/classify/image", {"images": [PNG_B64], "top_k": 3})
    labels = classified["results"][0]["labels"]
    assert len(labels) == 3 and labels[0]["score"] >= labels[1]["score"] >= labels[2]["score"]
    entities = ok(gateway + "/v1/ner", {"texts": ["Angela Merkel visited Paris."]})["results"][0]["entities"]
    assert {("Angela Merkel", "PERSON"), ("Paris", "GPE")} <= {(e["text"], e["label"]) for e in entities}
    models = ok(gateway + "/v1/models", None)["data"]
    embedders = [(m["modality"], m["embedding_dim"]) for m in models if m["task"] == "embed"]
    assert embedders == [("text", 384), ("image", 1280), ("audio", 1024)]
    by_task = {(m["modality"], m["task"]): m for m in models}
    assert {"PERSON", "GPE"} <= set(by_task["text", "ner"]["labels"])
    assert len(by_task["image", "classify"]["labels"]) == 1000
    assert len(by_task["audio", "classify"]["labels"]) == 521
    heads = {h["name"]: h for h in ok(gateway + "/v1/heads", None)["heads"]}
    assert heads["match"]["task"] == "classification" and heads["align"]["task"] == "alignment"


def test_fused_embed_predict_and_similarity(gateway: str) -> None:
    item = {"text": "a red circle", "image": PNG_B64}
    fused = ok(gateway + "/v1/embed", {"inputs": [item, {"text": "only text"}], "head": "match"})
    assert len(fused["embeddings"]) == 2
    single = ok(gateway + "/v1/predict", {**item, "head": "match"})
    batch = ok(gateway + "/v1/predict", {"inputs": [item], "head": "match"})
    assert single == batch
    prediction = single["predictions"][0]
    assert set(prediction["scores"]) == {"match", "mismatch"}
    assert prediction["score"] == max(prediction["scores"].values())
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)

    similar = ok(
        gateway + "/v1/similarity",
        {
            "texts": ["a red circle", "a blue square"],
            "images": [PNG_B64],
            "candidate_labels": ["red", "blue"],
            "head": "align",
        },
    )
    assert similar["space"] == "align" and np.array(similar["scores"]).shape == (2, 1)
    assert len(similar["zero_shot"]) == 1 and len(similar["zero_shot"][0]) == 2
    refused = post_json(gateway + "/v1/similarity", {"texts": ["a red circle"], "images": [PNG_B64]})
    assert refused.status == 400 and b"FAILED_PRECONDITION" in refused.body
    unknown = post_json(gateway + "/v1/predict", {**item, "head": "no-such-head"})
    assert unknown.status == 404 and b"no head named" in unknown.body


def test_bad_images_get_400_not_500(gateway: str) -> None:
    cases = {
        "not an image": base64.b64encode(b"hello").decode(),
        "too small": base64.b64encode(png_bytes(size=(1, 1))).decode(),
        "truncated": base64.b64encode(png_bytes()[:60]).decode(),
    }
    for name, image in cases.items():
        outcome = post_json(gateway + "/v1/embed/image", {"images": [image]})
        assert outcome.status == 400, name
        assert json.loads(outcome.body)["error"]["status"] == "INVALID_ARGUMENT"


def test_readiness_request_id_and_metrics_move_with_traffic(gateway: str) -> None:
    assert ok(gateway + "/readyz", None)["status"] == "ready"
    request = urllib.request.Request(
        gateway + "/v1/embed/text", data=b'{"texts": ["id"]}',
        headers={"Content-Type": "application/json", "X-Request-ID": "trace-42"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["X-Request-ID"] == "trace-42"

    def scrape() -> dict:
        with urllib.request.urlopen(gateway + "/metrics", timeout=10) as response:
            families = text_string_to_metric_families(response.read().decode())
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}

    route = (("method", "POST"), ("route", "/v1/embed/text"))
    requests_key = ("mmserve_http_requests_total", (*route, ("status", "200")))
    duration_key = ("mmserve_http_request_duration_seconds_count", route)
    upstream_key = (
        "mmserve_upstream_request_duration_seconds_count",
        (("code", "OK"), ("method", "Embed"), ("service", "text")),
    )
    counted = (requests_key, duration_key, upstream_key)
    before = scrape()
    for _ in range(5):
        ok(gateway + "/v1/embed/text", {"texts": ["count me"]})
    after = eventually(scrape, lambda now: all(now.get(k, 0) - before.get(k, 0) >= 5 for k in counted))
    for key in counted:
        assert after[key] - before.get(key, 0) >= 5, key
    assert after[("mmserve_http_requests_in_flight", ())] >= 1  # this scrape itself is in flight
    # Route labels are URL rules: a probe of random paths adds one "unmatched" series, not one per path.
    for path in ("/v1/a1", "/v1/b2", "/nothing/here"):
        assert post_json(gateway + path, None).status == 404

    def routes() -> set:
        return {
            dict(labels).get("route") for name, labels in scrape() if name == "mmserve_http_requests_total"
        }

    paths = eventually(routes, lambda seen: "unmatched" in seen)  # another worker may answer the scrape
    assert "unmatched" in paths and not {"/v1/a1", "/v1/b2", "/nothing/here"} & paths


def test_concurrent_sentences_share_text_calls_and_keep_their_own_vectors(gateway: str) -> None:
    sentences = [f"sentence {i}: {topic}" for i, topic in enumerate(["a cat", "the market", "rain"] * 8)]
    alone = {s: ok(gateway + "/v1/embed/text", {"texts": [s]})["embeddings"][0] for s in sentences}

    def merged_so_far() -> tuple[float, float]:
        families = scrape(gateway + "/metrics")
        return (
            sample_value(families, "mmserve_upstream_merged_requests_sum"),
            sample_value(families, "mmserve_upstream_merged_requests_count"),
        )

    requests_before, calls_before = settled(merged_so_far)
    with ThreadPoolExecutor(len(sentences)) as pool:
        replies = list(
            pool.map(
                lambda s: ok(gateway + "/v1/embeddings", {"input": s, "encoding_format": "float"}), sentences
            )
        )
    requests_after, calls_after = eventually(
        merged_so_far, lambda now: now[0] - requests_before >= len(sentences)
    )
    for sentence, reply in zip(sentences, replies, strict=True):
        np.testing.assert_allclose(reply["data"][0]["embedding"], alone[sentence], atol=1e-5)
    # Every request was answered by some call, and fewer calls than requests went to the encoder.
    assert requests_after - requests_before == len(sentences)
    assert calls_after - calls_before < len(sentences)


def test_openapi_and_swagger_ui_are_served(gateway: str) -> None:
    document = ok(gateway + "/openapi.json", None)
    assert {"/v1/embeddings", "/v1/embed/image", "/v1/similarity", "/readyz"} <= set(document["paths"])
    page = post_json(gateway + "/docs", None)
    assert page.status == 200 and b"swagger-ui-bundle.js" in page.body
    assert post_json(gateway + "/docs/static/swagger-ui-bundle.js", None).status == 200


def test_api_keys_on_a_second_gateway(text_service, vision_service, fusion_service, log_dir) -> None:
    keyed = start_service(
        "gateway",
        args=["--api-keys", "secret-1,secret-2", "--model-aliases", "m=sentence-transformers/all-MiniLM-L6-v2",
              "--text-address", text_service.address,
              "--vision-address", vision_service.address, "--fusion-address", fusion_service.address],
        log_dir=log_dir,
    )  # fmt: skip
    try:
        url = keyed.url + "/v1/embed/text"
        assert post_json(url, {"texts": ["a"]}).status == 401
        assert post_json(url, {"texts": ["a"]}, headers={"Authorization": "Bearer wrong"}).status == 401
        assert post_json(url, {"texts": ["a"]}, headers={"Authorization": "Bearer secret-2"}).status == 200
        assert post_json(keyed.url + "/v1/models", None).status == 401
        client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="secret-1", max_retries=0)
        assert (
            len(client.embeddings.create(model="m", input="with a key").data[0].embedding) == 384
        )  # an alias
        assert "m" in {m.id for m in client.models.list()}
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert post_json(keyed.url + path, None).status == 200, path
    finally:
        keyed.stop()


def test_openapi_contract_holds_under_every_schemathesis_check(gateway: str, tmp_path: Path) -> None:
    """Schemathesis with every check (valid requests accepted, invalid ones refused, status codes,
    content types, headers and bodies as documented, no 5xx, ...) over every operation of the
    served document, phases examples, coverage and fuzzing, fixed seed: zero findings.
    tests/support/schemathesis.toml holds the run's settings and its one exception."""
    junit = tmp_path / "junit.xml"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG),
        "run", gateway + "/openapi.json", "--checks", "all",
        "--report", "junit", "--report-junit-path", str(junit), "--no-color",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=REPO_ROOT)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:]
    document = ok(gateway + "/openapi.json", None)
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    tested = {case.get("name") for case in ElementTree.parse(junit).getroot().findall(".//testcase")}
    # Every operation but the document's own (schemathesis does not call the schema it loaded).
    assert len(documented) >= 20 and tested == documented - {"GET /openapi.json"}, documented ^ tested
