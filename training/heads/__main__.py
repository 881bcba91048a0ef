"""``python -m training.heads``: train one head, train the demo heads, compare strategies, or evaluate a head.

python -m training.heads train --data rows.jsonl --name match --strategy gated --out heads
python -m training.heads train --data orders.jsonl --task regression --loss huber
python -m training.heads train --data rows.jsonl --task multitask --task-weight total=0.5
python -m training.heads train --data alerts.jsonl --modalities text,audio,features --baselines
python -m training.heads demo --data data/demo --out heads
python -m training.heads compare --data data/demo
python -m training.heads evaluate --head heads/match
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from services.common.errors import MmserveError
from services.fusion.modalities import NAMES as MODALITY_NAMES
from services.fusion.outputs import OUTPUT_KINDS
from services.fusion.strategies import ALIGNMENT_STRATEGY, DECISION_STRATEGIES
from training.encoder_options import add_encoder_arguments, create_embedder
from training.heads import compare, evaluate
from training.heads.summary import format_summary
from training.heads.train import TASK_TYPES, TrainConfig, TrainResult, train_demo, train_head
from training.options import add_options, from_options

# Strategy hyper-parameters: passed to the strategy only when given.
_HPARAMS = (
    ("fused_dim", int, "Fused (or shared, for alignment) dimension; the token width for attention."),
    ("hidden_dim", int, "Hidden width of the MLPs (and of the attention feed-forward layers)."),
    ("dropout", float, "Dropout rate."),
    ("num_layers", int, "attention: transformer encoder layers."),
    ("num_heads", int, "attention: attention heads per layer."),
    ("tokens_per_modality", int, "attention: tokens each modality is projected to."),
)


def _named_values(kind: type, what: str):
    """argparse type for ``name=value``."""

    def parse(text: str) -> tuple[str, object]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
        try:
            return name, kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} of {name!r} must be a {kind.__name__}, got {value!r}"
            ) from None

    return parse


def _kind(value: str) -> str:
    if value not in OUTPUT_KINDS:
        raise ValueError(value)
    return value


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
    train.add_argument("--task", choices=TASK_TYPES, default="classification",
                       help="classification (label), regression (target / targets), multitask (labels), alignment.")  # fmt: skip
    train.add_argument("--strategy", choices=[*DECISION_STRATEGIES, ALIGNMENT_STRATEGY],
                       help="Fusion strategy (default: weighted_sum, or alignment with --task alignment).")  # fmt: skip
    train.add_argument("--task-weight", type=_named_values(float, "--task-weight"), action="append", default=[],
                       metavar="NAME=W", help="Loss weight of one task (multi-task / several targets); default 1.")  # fmt: skip
    train.add_argument("--task-kind", type=_named_values(_kind, "--task-kind"), action="append", default=[],
                       metavar="NAME=KIND",
                       help="classification or regression for a multi-task task (default: numbers are regression).")  # fmt: skip
    train.add_argument("--baselines", action="store_true",
                       help="Also train each modality alone (text_only, ...) on the same split; record their test figures.")  # fmt: skip
    train.add_argument("--modalities", type=lambda text: tuple(m for m in text.split(",") if m),
                       help=f"Comma-separated inputs of the head (of {', '.join(MODALITY_NAMES)}); default: what the data carries.")  # fmt: skip
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

    compare.add_arguments(
        commands.add_parser("compare", help="Compare the fusion strategies on the demo tasks.")
    )
    evaluate.add_arguments(commands.add_parser("evaluate", help="Re-run a head's report on any data."))
    return parser


def _print(trained: list[tuple[Path, TrainResult]]) -> None:
    for head_dir, result in trained:
        print(f"\n{head_dir} ({result.strategy}), held-out test split:")
        print(format_summary(result))


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
    if (args.task == "alignment") != (strategy == ALIGNMENT_STRATEGY):
        parser.error(f"--task {args.task} does not train the {strategy!r} strategy")
    hparams = {name: getattr(args, name) for name, _, _ in _HPARAMS if getattr(args, name) is not None}
    baselines = bool(args.baselines)
    embedder = create_embedder(args)
    try:
        name = args.name or args.data.stem
        return [
            train_head(
                args.data,
                name,
                strategy,
                args.out,
                embedder,
                cfg,
                hparams,
                baselines,
                task=args.task,
                task_kinds=dict(args.task_kind),
                task_weights=dict(args.task_weight),
                modalities=args.modalities,
            )  # fmt: skip
        ]
    finally:
        embedder.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "evaluate":
            evaluate.run(args, parser)
        elif args.command == "compare":
            compare.run(args, parser)
        else:
            _print(_train(args, parser))
    except (OSError, ValueError, MmserveError) as exc:  # DataError is a ValueError
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
