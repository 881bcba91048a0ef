"""Fine-tuning end to end on a tiny random BERT: train one epoch, save, reload, re-evaluate.

The model (hidden 32, 2 layers) and its WordPiece vocabulary are built here, so the tests need
no download and run in seconds; the real MiniLM runs are ``make finetune-demo``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
)

from training.finetune.cli import main
from training.finetune.conll import Sentence
from training.finetune.ner_task import NerTask
from training.finetune.saving import MANIFEST_FILE, REPORT_FILE, check_finetuned, load_finetuned

ROOT = Path(__file__).resolve().parents[2]
MAX_POSITIONS = 48
PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "london", "berlin"]
FILLER = ["met", "in", "the", "at", "today", "saw", "walked", "to", "and", "game", "match", "chip", "phone"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # The runs set torch's thread count for the whole process; leave it as other tests expect.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT with a fast WordPiece tokenizer, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-bert")
    words = [*PEOPLE, *PLACES, "new", "york", *FILLER, ".", "##s"]
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


def _tagged_sentence(rng: random.Random) -> list[tuple[str, str]]:
    rows = [(rng.choice(PEOPLE).title(), "B-PER"), (rng.choice(["met", "saw"]), "O")]
    if rng.random() < 0.3:
        rows += [("New", "B-LOC"), ("York", "I-LOC")]
    else:
        rows += [(rng.choice(PLACES).title(), "B-LOC")]
    return rows + [(rng.choice(FILLER), "O"), (".", "O")]


def _conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    blocks = ["\n".join(f"{token}\t{tag}" for token, tag in sentence) for sentence in sentences]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("ner") / "train.conll"
    return _conll(path, [_tagged_sentence(rng) for _ in range(30)])


@pytest.fixture(scope="module")
def classification_file(tmp_path_factory) -> Path:
    rng = random.Random(1)
    rows = []
    for i in range(30):
        label = ["sport", "tech"][i % 2]
        topic = ["game", "match"] if label == "sport" else ["chip", "phone"]
        rows.append({"text": f"{rng.choice(PEOPLE)} saw the {rng.choice(topic)} today", "label": label})
    path = tmp_path_factory.mktemp("classify") / "texts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _train(task: str, data: Path, model: Path, out: Path, *extra: str) -> dict:
    argv = [task, "--data", str(data), "--model", str(model), "--out", str(out)]
    argv += ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", "--no-progress", *extra]
    assert main(argv) == 0
    return json.loads((out / MANIFEST_FILE).read_text())


def _assert_output_folder(out: Path, task: str) -> None:
    assert (out / "model.safetensors").is_file()
    assert not (out / "pytorch_model.bin").exists()
    assert (out / REPORT_FILE).is_file() and (out / "tokenizer.json").is_file()
    assert check_finetuned(out)[0] == task
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600


def test_ner_trains_saves_and_reloads(tiny_bert, ner_file, tmp_path, capsys):
    out = tmp_path / "ner-model"
    manifest = _train("ner", ner_file, tiny_bert, out)
    _assert_output_folder(out, "ner")

    assert manifest["task"] == "ner"
    assert manifest["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert manifest["base_model"]["id"] == str(tiny_bert)
    assert manifest["base_model"]["revision"].startswith("sha256:")
    assert (
        manifest["data"]["files"]["data"]["sha256"]
        == __import__("hashlib").sha256(ner_file.read_bytes()).hexdigest()
    )
    assert sum(manifest["data"]["sizes"].values()) == 30
    assert manifest["hyperparameters"]["epochs"] == 1 and manifest["seed"] == 13
    assert [row["epoch"] for row in manifest["history"]] == [1]
    assert set(manifest["metrics"]["test"]) >= {"entity_micro_f1", "token_micro_f1_without_o"}

    report = json.loads((out / REPORT_FILE).read_text())
    assert {"entity", "token"} <= set(report) and report["examples"] == manifest["data"]["sizes"]["test"]
    printed = capsys.readouterr().out
    assert "entity level" in printed and "token micro F1 with O" in printed

    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(manifest["labels"]))
    assert model.config.label2id == {label: i for i, label in enumerate(manifest["labels"])}
    loaded = load_finetuned(out)
    assert loaded.task == "ner" and loaded.labels == tuple(manifest["labels"])


def test_same_seed_same_weights(tiny_bert, ner_file, tmp_path):
    first = _train("ner", ner_file, tiny_bert, tmp_path / "a")
    second = _train("ner", ner_file, tiny_bert, tmp_path / "b")
    assert first["history"][0]["train_loss"] == second["history"][0]["train_loss"]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b"))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_long_test_sentences_are_truncated_and_counted(tiny_bert, ner_file, tmp_path):
    rng = random.Random(5)
    long_sentence = [row for _ in range(15) for row in _tagged_sentence(rng)]  # 75+ words > 48 positions
    test_file = _conll(tmp_path / "test.conll", [_tagged_sentence(rng), long_sentence])
    manifest = _train("ner", ner_file, tiny_bert, tmp_path / "out", "--test", str(test_file))
    assert manifest["data"]["truncated"]["test"] == 1
    assert manifest["data"]["max_length"] == MAX_POSITIONS  # --max-length 128 capped at the model's
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    # Every word is scored, the cut-off ones as O: the long sentence's entities all count.
    assert report["entity"]["micro"]["support"] == 2 + 2 * 15


def test_truncation_keeps_word_labels_aligned(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    sentence = Sentence(
        ("Alice", "walked", "to", "New", "York", "today"), ("B-PER", "O", "O", "B-LOC", "I-LOC", "O"), 1
    )
    label2id = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}
    full = NerTask().encode([sentence], tokenizer, label2id, max_length=32)
    cut = NerTask().encode([sentence], tokenizer, label2id, max_length=5)  # [CLS] + 3 words + [SEP]
    assert (full.truncated, cut.truncated) == (0, 1)
    assert full.features[0].labels == (-100, 3, 0, 0, 1, 2, 0, -100)
    assert cut.features[0].labels == (-100, 3, 0, 0, -100) and cut.features[0].word_starts == (1, 2, 3)


def test_dev_file_with_an_unknown_type_is_refused(tiny_bert, ner_file, tmp_path, capsys):
    dev = _conll(tmp_path / "dev.conll", [[("Alice", "B-PER")], [("Acme", "B-ORG")]])
    argv = [
        "ner",
        "--data",
        str(ner_file),
        "--dev",
        str(dev),
        "--model",
        str(tiny_bert),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 1
    assert f"{dev}:3: unknown entity type 'ORG'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_classification_trains_saves_reloads_and_re_evaluates(tiny_bert, classification_file, tmp_path):
    out = tmp_path / "classifier"
    manifest = _train("classify", classification_file, tiny_bert, out)
    _assert_output_folder(out, "classify")
    assert manifest["labels"] == ["sport", "tech"]
    # Stratified per label: round(0.1 * 15) = 2 of each label in dev and in test.
    assert manifest["data"]["sizes"] == {"train": 22, "dev": 4, "test": 4}
    report = json.loads((out / REPORT_FILE).read_text())
    assert {"per_class", "accuracy", "macro", "weighted", "confusion_matrix"} <= set(report)
    assert sum(map(sum, report["confusion_matrix"]["rows_true_columns_predicted"])) == 4

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "sport", 1: "tech"}

    # `evaluate` re-runs the report from the folder alone, here through the real entry point.
    report_out = tmp_path / "again.json"
    command = [sys.executable, "-m", "training.finetune", "evaluate", "--model", str(out)]
    command += ["--data", str(classification_file), "--report-out", str(report_out), "--threads", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "confusion matrix" in done.stdout
    again = json.loads(report_out.read_text())
    assert again["examples"] == 30 and again["data"]["path"] == str(classification_file)


def test_out_refuses_an_unrelated_folder(tiny_bert, classification_file, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    argv = ["classify", "--data", str(classification_file), "--model", str(tiny_bert), "--out", str(precious)]
    assert main([*argv, "--epochs", "1", "--threads", "1"]) == 1
    assert "not an earlier fine-tuning output" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def saved_classifier(tiny_bert, classification_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "model"
    threads = torch.get_num_threads()
    _train("classify", classification_file, tiny_bert, out)
    torch.set_num_threads(threads)
    return out


def _broken_copy(source: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    return copy


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_load_finetuned_refuses_pickled_weights_only(saved_classifier, tmp_path):
    folder = _broken_copy(saved_classifier, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no safetensors weights .*pytorch_model\.bin is not loaded"):
        load_finetuned(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id2label": None}, "no id2label"),
        ({"id2label": {"0": "sport", "2": "tech"}}, "ids must be 0..1"),
        ({"id2label": {"0": "sport", "1": "sport"}}, "distinct"),
        (
            {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}},
            "placeholder",
        ),
        ({"label2id": {"sport": 1, "tech": 0}}, "not the inverse"),
        ({"architectures": ["BertModel"]}, "neither token nor sequence"),
        ({"architectures": ["BertForTokenClassification"]}, "says task 'classify'"),
    ],
)
def test_load_finetuned_refuses_inconsistent_labels(saved_classifier, tmp_path, changes, message):
    folder = _broken_copy(saved_classifier, tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(ValueError, match=message):
        load_finetuned(folder)


def test_load_finetuned_refuses_a_manifest_that_disagrees(saved_classifier, tmp_path):
    folder = _broken_copy(saved_classifier, tmp_path)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["labels"] = ["tech", "sport"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="labels differ"):
        load_finetuned(folder)
