"""``python -m training.finetune {ner,classify,evaluate}``: the fine-tuning command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import transformers

from services.text.embedding import DEFAULT_MODEL_ID, default_model_dir
from training.finetune.classification_task import ClassificationTask
from training.finetune.conll import SCHEMES
from training.finetune.loop import TrainConfig
from training.finetune.ner_metrics import CHUNKING_MODES
from training.finetune.ner_task import NerTask
from training.finetune.pipeline import BaseModel, DataFiles, evaluate_folder, finetune
from training.options import add_options, from_options

_LOGGER = logging.getLogger(__name__)


def base_model(model: str, revision: str = "") -> BaseModel:
    """``--model``: a local directory or hub id; empty means the packaged all-MiniLM-L6-v2."""
    if not model:
        return BaseModel(str(default_model_dir()), DEFAULT_MODEL_ID, revision)
    return BaseModel(model, model, revision)


def _add_training_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    parser.add_argument("--data", type=Path, required=True, help=data_help)
    parser.add_argument("--dev", type=Path, help="Dev file for early stopping; default: a split of --data.")
    parser.add_argument("--test", type=Path, help="Test file for the report; default: a split of --data.")
    parser.add_argument("--dev-fraction", type=float, default=0.1, help="Share of --data for dev [0.1].")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="Share of --data for test [0.1].")
    parser.add_argument(
        "--out", type=Path, required=True, help="Output folder (replaced if an earlier output)."
    )
    parser.add_argument(
        "--model", default="", help="Base model: local directory or hub id; empty: packaged all-MiniLM-L6-v2."
    )
    parser.add_argument("--revision", default="", help="Hub revision of --model.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: every available core.")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="No per-batch bar."
    )
    add_options(parser.add_argument_group("optimisation"), TrainConfig)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ner = commands.add_parser("ner", help="Fine-tune a token classifier on CoNLL data.")
    _add_training_arguments(ner, "CoNLL file: token ... tag per line, a blank line between sentences.")
    ner.add_argument("--scheme", choices=SCHEMES, default="auto", help="Tagging scheme of the files [auto].")
    ner.add_argument(
        "--chunking",
        choices=CHUNKING_MODES,
        default="default",
        help="Entity chunking of the report [default].",
    )

    classify = commands.add_parser("classify", help="Fine-tune a sequence classifier on JSONL or CSV.")
    _add_training_arguments(classify, 'JSONL {"text", "label"} per line, or CSV with a text,label header.')

    evaluate = commands.add_parser("evaluate", help="Re-run the report of a fine-tuned folder on a file.")
    evaluate.add_argument("--model", type=Path, required=True, help="A fine-tuned output folder.")
    evaluate.add_argument("--data", type=Path, required=True, help="A file in the task's format.")
    evaluate.add_argument("--batch-size", type=int, default=32, help="Examples per inference batch [32].")
    evaluate.add_argument("--threads", type=int, default=0, help="torch threads; 0: every available core.")
    evaluate.add_argument("--report-out", type=Path, help="Also write the report as JSON here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # transformers' load reports (the new head's initialisation, the unused pooler) are expected here.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()
    args = _parse_args(argv)
    try:
        if args.command == "evaluate":
            report = evaluate_folder(args.model, args.data, args.batch_size, args.threads or None)
            if args.report_out:
                args.report_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            return 0
        task = NerTask(args.scheme, args.chunking) if args.command == "ner" else ClassificationTask()
        files = DataFiles(args.data, args.dev, args.test, args.dev_fraction, args.test_fraction)
        finetune(
            task,
            files,
            base_model(args.model, args.revision),
            args.out,
            from_options(TrainConfig, args),
            threads=args.threads or None,
            progress=args.progress,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
