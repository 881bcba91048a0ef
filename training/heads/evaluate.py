"""Evaluates a head: per-class precision/recall/F1 (classification) or retrieval top-k (alignment).

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

from services.fusion.heads import Head, check_compatible, load_head
from training.data import EmbeddedSet, data_sha256, embed_examples, read_examples, split_indices
from training.encoder_options import add_encoder_arguments, create_embedder
from training.reports import REPORT_FILE, classification_report, format_report, retrieval_report, write_report


def evaluate_head(head: Head, data: EmbeddedSet) -> dict[str, Any]:
    """Scores a loaded head on embedded examples (alignment rows need both modalities)."""
    if head.task == "alignment":
        both = data.text_mask & data.image_mask
        labels = [label for label, keep in zip(data.labels, both, strict=True) if keep]
        return retrieval_report(
            head.project_text(data.text[both]), head.project_image(data.image[both]), labels
        )
    probs = head.predict_proba(data.text, data.image, data.text_mask, data.image_mask)
    predicted = [head.labels[i] for i in probs.argmax(axis=1)]
    return classification_report(list(data.labels), predicted, head.labels)


def subset(data: EmbeddedSet, rows: np.ndarray) -> EmbeddedSet:
    return EmbeddedSet(
        data.text[rows],
        data.image[rows],
        data.text_mask[rows],
        data.image_mask[rows],
        tuple(data.labels[i] for i in rows),
    )


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

    examples = read_examples(data_path, require_label=head.task == "classification")
    if use_test:
        split = split_indices(
            [e.label for e in examples], training["val_fraction"], training["test_fraction"], training["seed"]
        )
        examples = [examples[i] for i in split.test]
    embedder = create_embedder(args)
    try:
        check_compatible(head.manifest, embedder.text_info, embedder.image_info)
        data = embed_examples(examples, embedder, progress=sys.stderr.isatty())
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
