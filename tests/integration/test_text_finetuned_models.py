"""The text service serving fine-tuned models: NER with its own label set and ClassifyText, over
real gRPC from a separate process and over HTTP through a real gateway; folders that are not
servable are refused at start."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mmserve.v1 import common_pb2, text_pb2, text_pb2_grpc
from scripts.stack import ServiceProcess, start_service
from tests.support.tiny_text_models import CLASSES, save_tiny_classifier, save_tiny_ner
from tests.support.traffic import post_json

TEXTS = ["Alice flew to Paris on Monday", "the match ended two nil", "new chips are faster"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetuned")
    return {"ner": save_tiny_ner(root / "ner"), "classifier": save_tiny_classifier(root / "classifier")}


@pytest.fixture(scope="module")
def service(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    args = ["--ner-model", str(models["ner"]), "--classifier-model", str(models["classifier"])]
    started = start_service("text", args=args, log_dir=tmp_path_factory.mktemp("logs"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def stub(service: ServiceProcess):
    with grpc.insecure_channel(service.address) as channel:
        yield text_pb2_grpc.TextEncoderServiceStub(channel)


@pytest.fixture(scope="module")
def gateway(service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory):
    dead = "127.0.0.1:1"  # only the text service is needed here
    args = ["--text-address", service.address, "--vision-address", dead, "--fusion-address", dead]
    started = start_service("gateway", args=args, log_dir=tmp_path_factory.mktemp("gateway-logs"))
    yield started.url
    started.stop()


def test_ner_serves_the_models_own_labels_with_scores(stub) -> None:
    reply = stub.ExtractEntities(text_pb2.ExtractEntitiesRequest(texts=TEXTS[:1]), timeout=30)
    entities = reply.results[0].entities
    assert entities, "the biased model tags every word B-PER"
    assert {e.label for e in entities} == {"PER"}
    for e in entities:
        assert TEXTS[0][e.start_char : e.end_char] == e.text and 0.5 < e.score <= 1.0
    assert reply.model_id.endswith("ner")


def test_model_info_lists_every_task_and_its_labels(stub) -> None:
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(include_labels=True), timeout=10)
    tasks = {t.task: t for t in info.tasks}
    assert list(tasks) == ["embed", "ner", "classify"]
    assert list(tasks["ner"].labels) == ["PER", "LOC"] and tasks["ner"].num_labels == 2
    assert list(tasks["classify"].labels) == list(CLASSES)
    assert tasks["embed"].model_id == info.model_id and tasks["embed"].num_labels == 0
    brief = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert (
        all(not t.labels for t in brief.tasks)
        and {t.task: t.num_labels for t in brief.tasks}["classify"] == 3
    )


def test_classify_text_equals_the_in_process_model(stub, models: dict[str, Path]) -> None:
    reply = stub.ClassifyText(text_pb2.ClassifyTextRequest(texts=TEXTS, top_k=2), timeout=30)
    model = AutoModelForSequenceClassification.from_pretrained(models["classifier"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(models["classifier"])
    with torch.inference_mode():
        probabilities = torch.softmax(model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits, -1)
    for result, expected in zip(reply.results, probabilities, strict=True):
        assert len(result.labels) == 2
        assert result.labels[0].label == CLASSES[int(expected.argmax())]
        assert result.labels[0].score == pytest.approx(float(expected.max()), abs=1e-4)
        assert result.labels[0].score >= result.labels[1].score
    default = stub.ClassifyText(text_pb2.ClassifyTextRequest(texts=TEXTS[:1]), timeout=30)
    assert len(default.results[0].labels) == len(CLASSES)  # default top_k 5, capped at the label count


def test_the_fine_tuned_models_over_http(gateway: str, stub) -> None:
    entities = post_json(gateway + "/v1/ner", {"texts": TEXTS[:1]})
    assert entities.status == 200 and {e["label"] for e in entities.json["results"][0]["entities"]} == {"PER"}
    classified = post_json(gateway + "/v1/classify/text", {"texts": TEXTS, "top_k": 1})
    served = stub.ClassifyText(text_pb2.ClassifyTextRequest(texts=TEXTS, top_k=1), timeout=30)
    assert classified.status == 200
    assert [r["labels"][0]["label"] for r in classified.json["results"]] == [
        r.labels[0].label for r in served.results
    ]
    one = post_json(gateway + "/text-classification", {"text": TEXTS[0]})
    assert one.status == 200 and one.json["label"] == classified.json["results"][0]["labels"][0]["label"]
    assert one.json["score"] == pytest.approx(classified.json["results"][0]["labels"][0]["score"])
    refused = post_json(gateway + "/text-classification", {"text": ""})
    assert refused.status == 400 and refused.json["error"]["status"] == "INVALID_ARGUMENT"
    models = post_json(gateway + "/v1/models", None).json["data"]
    by_task = {m["task"]: m for m in models if m["modality"] == "text"}
    assert by_task["ner"]["labels"] == ["PER", "LOC"] and by_task["classify"]["labels"] == list(CLASSES)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (text_pb2.ClassifyTextRequest(texts=[]), "at least one text"),
        (text_pb2.ClassifyTextRequest(texts=["   "]), "texts[0] is empty"),
        (text_pb2.ClassifyTextRequest(texts=["x"] * 65), "too many texts"),
        (text_pb2.ClassifyTextRequest(texts=["x"], top_k=-1), "top_k must be >= 0"),
    ],
)
def test_classify_text_refuses_bad_requests(stub, request_, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClassifyText(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_classify_text_without_a_classifier_is_a_failed_precondition(text_service: ServiceProcess) -> None:
    with grpc.insecure_channel(text_service.address) as channel:
        stub = text_pb2_grpc.TextEncoderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ClassifyText(text_pb2.ClassifyTextRequest(texts=["hello"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MMSERVE_TEXT_CLASSIFIER_MODEL" in caught.value.details()


def test_unservable_folders_are_refused_at_start(tmp_path: Path) -> None:
    placeholder = save_tiny_classifier(tmp_path / "placeholder", labels=("LABEL_0", "LABEL_1"))
    pickled = save_tiny_classifier(tmp_path / "pickled")
    for weights in pickled.glob("*.safetensors"):  # only a pickle left: never loaded
        state = AutoModelForSequenceClassification.from_pretrained(pickled).state_dict()
        torch.save(state, pickled / "pytorch_model.bin")
        weights.unlink()
    (tmp_path / "empty").mkdir()
    for folder, expected in (
        (placeholder, "no label names"),
        (pickled, "cannot load"),
        (tmp_path / "empty", "cannot load"),
    ):
        with pytest.raises(RuntimeError, match="exited") as caught:
            start_service("text", args=["--classifier-model", str(folder)], log_dir=tmp_path, timeout_s=120)
        assert expected in str(caught.value), str(caught.value)
