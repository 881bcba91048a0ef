"""Evaluates a head: per-class precision/recall/F1 (classification), MAE / RMSE / R² (regression),
one of those per task (multi-task) or retrieval top-k (alignment).

``python -m training.heads evaluate --head heads/match [--data data/demo/match.jsonl]`` prints
a table and writes ``report.json`` into the head's directory. When the data is the file the
head was trained on (same sha256), only its held-out test split is scored, as recorded in the
manifest; any other file is scored whole.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from services.fusion.heads import Head, check_encoders, load_head
from services.fusion.outputs import CLASSIFICATION, DEFAULT_CLASSIFICATION_OUTPUT
from training.data import EmbeddedSet, data_sha256, embed_examples, read_examples, split_indices
from training.embedders import encoder_info
from training.encoder_options import add_encoder_arguments, create_embedder
from training.heads.tasks import number_text
from training.reports import (
    REPORT_FILE,
    classification_report,
    format_report,
    multitask_report,
    regression_report,
    retrieval_report,
    write_report,
)


def _answers(data: EmbeddedSet, name: str) -> list:
    """Each row's answer for output ``name`` (None where the row has none)."""
    if name == DEFAULT_CLASSIFICATION_OUTPUT and any(label is not None for label in data.labels):
        return list(data.labels)
    targets = data.targets or ({},) * len(data)
    return [row.get(name) for row in targets]


def evaluate_head(head: Head, data: EmbeddedSet) -> dict[str, Any]:
    """Scores a loaded head on embedded examples (alignment rows need both modalities); each output
    on the rows that have its answer."""
    if head.task == "alignment":
        both = data.text_mask & data.image_mask
        labels = [label for label, keep in zip(data.labels, both, strict=True) if keep]
        return retrieval_report(
            head.project_text(data.text[both]), head.project_image(data.image[both]), labels
        )
    outputs = head.predict(inputs=data.inputs, masks=data.masks)
    parts: dict[str, dict[str, Any]] = {}
    for spec in head.outputs:
        answers = _answers(data, spec.name)
        rows = [i for i, answer in enumerate(answers) if answer is not None]
        if spec.kind == CLASSIFICATION:
            probabilities = outputs.probabilities[spec.name][rows]
            truth = [answers[i] if isinstance(answers[i], str) else number_text(answers[i]) for i in rows]
            predicted = [spec.labels[i] for i in probabilities.argmax(axis=1)]
            parts[spec.name] = classification_report(truth, predicted, spec.labels)
        else:
            truth = np.array([answers[i] for i in rows], dtype=np.float64)
            parts[spec.name] = regression_report(
                {spec.name: truth}, {spec.name: outputs.values[spec.name][rows]}
            )
    if head.task == "classification":
        return parts[head.outputs[0].name]
    if head.task == "regression":
        return regression_report(
            {
                name: np.array([t for t in _answers(data, name) if t is not None], np.float64)
                for name in parts
            },
            {
                name: outputs.values[name][[i for i, t in enumerate(_answers(data, name)) if t is not None]]
                for name in parts
            },
        )
    return multitask_report(parts)


def subset(data: EmbeddedSet, rows: np.ndarray) -> EmbeddedSet:
    return data.subset(rows)


def stratify_keys(head: Head, examples: list) -> list:
    """What training stratified its split by: the label, or the first classification output's."""
    for spec in head.outputs:
        if spec.kind != CLASSIFICATION:
            continue
        if spec.name == DEFAULT_CLASSIFICATION_OUTPUT and head.task == "classification":
            return [e.label for e in examples]
        values = [
            e.targets.get(spec.name) if spec.name != DEFAULT_CLASSIFICATION_OUTPUT else e.label
            for e in examples
        ]
        return [v if v is None or isinstance(v, str) else number_text(v) for v in values]
    return [e.label if head.task == "alignment" else None for e in examples]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", type=Path, required=True, help="Head directory.")
    parser.add_argument(
        "--data",
        type=Path,
        help="Data to score (JSONL, CSV, image folder); default: the head's training data.",
    )
    parser.add_argument("--split", choices=("auto", "test", "all"), default="auto",
                        help="auto: the held-out test split when --data is the training data, else all rows.")  # fmt: skip
    parser.add_argument("--out", type=Path, help=f"Report path; default: <head>/{REPORT_FILE}.")
    add_encoder_arguments(parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    head = load_head(args.head)
    training = head.manifest.metrics.get("training", {})
    data_path = args.data or (Path(training["data"]) if "data" in training else None)
    if data_path is None:
        parser.error("--data is required: the head does not record its training data")
    same_file = training.get("data_sha256") == data_sha256(data_path)
    if args.split == "test" and not same_file:
        parser.error(f"{data_path} is not the data {head.name!r} was trained on; its test split is unknown")
    use_test = args.split == "test" or (args.split == "auto" and same_file)

    examples = read_examples(
        data_path,
        require_label=head.task == "classification",
        require_targets=head.task in ("regression", "multitask"),
    )
    if use_test:
        split = split_indices(
            stratify_keys(head, examples),
            training["val_fraction"],
            training["test_fraction"],
            training["seed"],
        )
        examples = [examples[i] for i in split.test]
    embedder = create_embedder(args)
    try:
        check_encoders(
            head.manifest, {m: encoder_info(embedder, m) for m in head.manifest.encoded_modalities}
        )
        data = embed_examples(
            examples, embedder, progress=sys.stderr.isatty(), modalities=head.manifest.inputs
        )
    finally:
        embedder.close()
    report = evaluate_head(head, data)
    report["head"] = head.name
    report["data"] = str(data_path)
    report["split"] = "test" if use_test else "all"
    print(f"{head.name} on {data_path} ({report['split']}):")
    print(format_report(report))
    if args.out is None:
        out = write_report(args.head, report)
    else:
        out = args.out
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
