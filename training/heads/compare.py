"""Compares the fusion strategies on the demo tasks: ``python -m training.heads compare --data data/demo``.

Every strategy (and each modality alone, as a baseline) is trained the same way on the same split
of each task; the tables printed are the README's, one pair per set of modalities: the held-out
test figure per strategy (accuracy; R² for regression), then the same test rows with each
modality masked. ``--json`` also writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.data import embed_examples, read_examples
from training.encoder_options import add_encoder_arguments, create_embedder
from training.heads.missing import case_names
from training.heads.train import TrainConfig, single_baselines, train_on
from training.options import add_options, from_options

# (task file stem, what the head learns, what the task tests)
TASKS = (
    ("match", "classification", "caption matches image (needs both)"),
    ("shape_colour", "classification", "colour from text, shape from image"),
    ("order_total", "regression", "quantity from text x unit price from image"),
    ("order", "multitask", "variant + total, some labels missing"),
    ("region", "classification", "text picks which side of the image matters"),
    ("risk", "classification", "purpose from text x debt ratio from features"),
    ("sound_caption", "classification", "caption matches sound (needs both)"),
)
STRATEGIES = ("weighted_sum", "concat_mlp", "gated", "attention")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="Directory written by python -m training.demo_data."
    )
    parser.add_argument("--tasks", default=",".join(t[0] for t in TASKS), help="Comma-separated demo tasks.")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="Comma-separated fused strategies."
    )
    parser.add_argument("--json", type=Path, help="Also write every figure to this file.")
    add_options(parser.add_argument_group("optimisation"), TrainConfig)
    add_encoder_arguments(parser)


def _primary(metrics: dict[str, Any], case: str | None = None) -> dict[str, float | None]:
    """The figure(s) a table cell shows: accuracy or R² per output, on the test split or a masked case."""
    if case is not None:
        figures = metrics["masked_modality"]["cases"].get(case, {})
        return {name: part.get("accuracy", part.get("r2")) for name, part in figures.items()}
    if "test_accuracy" in metrics:
        return {"label": metrics["test_accuracy"]}
    if "test_r2" in metrics:
        return {"target": metrics["test_r2"]}
    return {name: part.get("test_accuracy", part.get("test_r2")) for name, part in metrics["tasks"].items()}


def _cell(figures: dict[str, float | None]) -> str:
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in figures.values())


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    cfg = from_options(TrainConfig, args)
    known = {t[0]: t for t in TASKS}
    tasks = [known[name] for name in args.tasks.split(",") if name in known]
    strategies = [s for s in args.strategies.split(",") if s]
    figures: dict[str, dict[str, Any]] = {}
    modalities: dict[str, tuple[str, ...]] = {}
    embedder = create_embedder(args)
    try:
        for name, task, _ in tasks:
            path = args.data / f"{name}.jsonl"
            if not path.is_file():
                parser.error(
                    f"{path} not found; generate it with python -m training.demo_data --out {args.data}"
                )
            examples = read_examples(
                path, require_label=task == "classification", require_targets=task != "classification"
            )
            data = embed_examples(examples, embedder, progress=sys.stderr.isatty())
            modalities[name] = data.modalities
            figures[name] = {}
            for strategy in [*strategies, *single_baselines(data.modalities)]:
                metrics = train_on(data, task, strategy, {}, cfg).metrics
                figures[name][strategy] = {
                    "test": _primary(metrics),
                    "kinds": {
                        n: "accuracy" if "test_accuracy" in part else "R²"
                        for n, part in metrics.get("tasks", {}).items()
                    },
                    **{case: _primary(metrics, case) for case in _masked_cases(data.modalities)},
                    "epochs_run": metrics["epochs_run"],
                }
                print(
                    f"{name} {strategy}: {_cell(figures[name][strategy]['test'])}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        embedder.close()
    print(format_tables(figures, tasks, strategies, modalities))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


def _masked_cases(modalities: tuple[str, ...]) -> list[str]:
    """The masked cases of a head over ``modalities``, in report order (each masks one modality)."""
    return [case for case, masked in case_names(modalities).items() if masked is not None]


def _what(task: str, figures: dict[str, Any]) -> str:
    """The figure a row shows: accuracy, R², or each output's (accuracy for classes, R² for values)."""
    if task != "multitask":
        return "accuracy" if task == "classification" else "R²"
    kinds = figures.get("kinds", {})
    return " / ".join(f"`{name}` {kinds.get(name, '')}".strip() for name in figures["test"])


def format_tables(
    figures: dict[str, Any], tasks, strategies, modalities: dict[str, tuple[str, ...]] | None = None
) -> str:
    """A pair of tables per set of modalities (tasks over text + image first, as they are listed)."""
    modalities = modalities or {}
    groups: dict[tuple[str, ...], list] = {}
    for task in tasks:
        groups.setdefault(modalities.get(task[0], ("text", "image")), []).append(task)
    return "\n\n".join(_tables(figures, group, strategies, names) for names, group in groups.items())


def _tables(figures: dict[str, Any], tasks, strategies, names: tuple[str, ...]) -> str:
    baselines = single_baselines(names)
    masked = _masked_cases(names)
    header = ["task", "figure", *strategies, *(f"{b} baseline" for b in baselines)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, task, _ in tasks:
        what = _what(task, figures[name][strategies[0]])
        cells = [_cell(figures[name][s]["test"]) for s in [*strategies, *baselines]]
        lines.append(f"| `{name}` | {what} | " + " | ".join(cells) + " |")
    titles = " · ".join(f"{m} masked" for m in case_names(names).values() if m is not None)
    lines += ["", f"| task ({titles}) | " + " | ".join(strategies) + " |"]
    lines.append("|" + "---|" * (len(strategies) + 1))
    for name, _, _ in tasks:
        cells = [" · ".join(_cell(figures[name][s][case]) for case in masked) for s in strategies]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
