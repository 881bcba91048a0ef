"""What training prints about a head: its test report, then how it weighs and misses modalities."""

from __future__ import annotations

from typing import Any

from training.heads.missing import case_title
from training.heads.train import TrainResult
from training.reports import format_report


def _figure(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_figure(v)}" for k, v in value.items())
    return "n/a" if value is None else f"{value:.3f}"


def masked_modality_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per case and output: the figures with each modality masked on the test split."""
    report = metrics.get("masked_modality") or {}
    cases = report.get("cases") or {}
    modalities = report.get("modalities", ("text", "image"))
    lines = []
    for case, outputs in cases.items():
        title = case_title(case, modalities)
        for output, figures in outputs.items():
            if "accuracy" in figures:
                text = (
                    f"accuracy {figures['accuracy']:.3f}, NLL {figures['nll']:.3f}, "
                    f"mean confidence {figures['mean_confidence']:.3f}"
                )
            else:
                text = f"MAE {figures['mae']:.3f}, RMSE {figures['rmse']:.3f}, R² {_figure(figures['r2'])}"
            lines.append(f"  {title:>13} [{output}]: {text}")
    return lines


def format_summary(result: TrainResult) -> str:
    metrics = result.metrics
    lines = [format_report(result.report)]
    for key in ("baselines_test_accuracy", "baselines_test_r2", "baselines_test"):
        if metrics.get(key):
            what = key.removeprefix("baselines_test").lstrip("_") or "figures"
            lines.append(f"separately trained baselines (test {what}): {_figure(metrics[key])}")
    if result.fusion_weights:
        lines.append(f"learned fusion weights: {_figure(result.fusion_weights)}")
    contribution = metrics.get("modality_contribution") or {}
    if contribution:
        drops = ", ".join(f"{m} {v:.3f}" for m, v in contribution.items() if m != "metric")
        lines.append(f"modality contribution (drop in test {contribution['metric']} when masked): {drops}")
    masked = masked_modality_lines(metrics)
    if masked:
        lines.append(
            f"test split with a modality masked ({metrics['masked_modality']['rows']} rows with all modalities):"
        )
        lines.extend(masked)
    for output, calibration in (metrics.get("calibration") or {}).items():
        lines.append(
            f"calibration [{output}]: T {calibration['temperature']:.3f}; test ECE "
            f"{calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}, Brier "
            f"{calibration['brier_before']:.3f} -> {calibration['brier_after']:.3f}"
        )
        for missing, part in (calibration.get("missing") or {}).items():
            lines.append(
                f"  without {missing}: T {part['temperature']:.3f}; ECE {part['ece_before']:.3f} -> "
                f"{part['ece_after']:.3f}, Brier {part['brier_before']:.3f} -> {part['brier_after']:.3f}"
            )
    if result.strategy != "alignment":
        lines.append(f"missing-modality policy: {result.missing_modality_policy}")
    return "\n".join(lines)
