"""``python -m training.heads``: train one head, train the demo heads, or evaluate a head.

python -m training.heads train --data rows.jsonl --name match --strategy gated --out heads
python -m training.heads demo --data data/demo --out heads
python -m training.heads evaluate --head heads/match
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from services.common.errors import MmserveError
from services.fusion.strategies import ALIGNMENT_STRATEGY, CLASSIFICATION_STRATEGIES
from training.encoder_options import add_encoder_arguments, create_embedder
from training.heads import evaluate
from training.heads.train import BASELINES, TrainConfig, TrainResult, train_demo, train_head
from training.options import add_options, from_options
from training.reports import format_report

# Strategy hyper-parameters: passed to the strategy only when given.
_HPARAMS = (
    ("fused_dim", int, "Fused (or shared, for alignment) dimension."),
    ("hidden_dim", int, "Hidden width of the MLPs."),
    ("dropout", float, "Dropout rate."),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.heads", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="Train one head on a JSONL file, a CSV file or an image folder."
    )
    train.add_argument(
        "--data", type=Path, required=True, help="JSONL, CSV, or <dir>/<label>/<image> folder."
    )
    train.add_argument("--name", help="Head name (default: the data file's stem).")
    train.add_argument("--task", choices=("classification", "alignment"), default="classification")
    train.add_argument("--strategy", choices=[*CLASSIFICATION_STRATEGIES, ALIGNMENT_STRATEGY],
                       help="Fusion strategy (default: weighted_sum, or alignment with --task alignment).")  # fmt: skip
    train.add_argument("--baselines", action="store_true",
                       help="Also train text_only and image_only on the same split; record their test accuracy.")  # fmt: skip
    for name, kind, help_text in _HPARAMS:
        train.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)

    demo = commands.add_parser("demo", help="Train the demo heads of a training.demo_data directory.")
    demo.add_argument(
        "--data", type=Path, required=True, help="Directory written by python -m training.demo_data."
    )

    for command in (train, demo):
        command.add_argument("--out", type=Path, default=Path("heads"), help="Heads directory.")
        add_options(command.add_argument_group("optimisation"), TrainConfig)
        add_encoder_arguments(command)

    evaluate.add_arguments(commands.add_parser("evaluate", help="Re-run a head's report on any data."))
    return parser


def _print(trained: list[tuple[Path, TrainResult]]) -> None:
    for head_dir, result in trained:
        print(f"\n{head_dir} ({result.strategy}), held-out test split:")
        print(format_report(result.report))
        baselines = result.metrics.get("baselines_test_accuracy")
        if baselines:
            print("baselines (test accuracy): " + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[Path, TrainResult]]:
    if not args.data.exists():
        parser.error(f"--data {args.data} does not exist")
    cfg = from_options(TrainConfig, args)
    if args.command == "demo":
        embedder = create_embedder(args)
        try:
            return train_demo(args.data, args.out, embedder, cfg)
        finally:
            embedder.close()
    strategy = args.strategy or (ALIGNMENT_STRATEGY if args.task == "alignment" else "weighted_sum")
    if args.task == "alignment" and strategy != ALIGNMENT_STRATEGY:
        parser.error(f"--task alignment trains the alignment strategy, not {strategy!r}")
    hparams = {name: getattr(args, name) for name, _, _ in _HPARAMS if getattr(args, name) is not None}
    baselines = BASELINES if args.baselines else ()
    embedder = create_embedder(args)
    try:
        name = args.name or args.data.stem
        return [train_head(args.data, name, strategy, args.out, embedder, cfg, hparams, baselines)]
    finally:
        embedder.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "evaluate":
            evaluate.run(args, parser)
        else:
            _print(_train(args, parser))
    except (OSError, ValueError, MmserveError) as exc:  # DataError is a ValueError
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
