"""Temperature scaling (Guo et al., 2017) and the calibration measures it is judged by.

One scalar T per classification output divides the logits before the softmax; it is fitted on
the validation split by minimising the negative log-likelihood and never changes which class
wins (accuracy is untouched), only how confident the probabilities are. ECE and the Brier score
are reported on the test split before and after, so a temperature that does not generalise shows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from training.data import EmbeddedSet
from training.heads.tasks import Task

ECE_BINS = 15
# (rows, {modality: kept [len(rows)] bool}) -> raw decision-layer outputs [len(rows), columns]
RawOutputs = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]
# Inverse temperatures searched: T from 1/20 (sharpen) to 1000 (flatten a head that is sure
# of answers it cannot know, e.g. one modality missing and no modality dropout in training).
_BETA_RANGE = (1e-3, 20.0)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` under softmax(logits / T)."""
    if len(targets) == 0:
        return 0.0
    log_probs = log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(0.0 - log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, iterations: int = 80) -> float:
    """The T minimising the NLL of ``targets``; 1.0 when there is nothing to fit on.

    NLL is convex in beta = 1/T (a log-sum-exp of linear functions minus a linear term), so a
    golden-section search over beta finds the minimum without gradients or tuning.
    """
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    if len(targets) == 0:
        return 1.0
    low, high = _BETA_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, targets, 1 / c), nll(logits, targets, 1 / d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, targets, 1 / c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, targets, 1 / d)
    return float(1 / ((a + b) / 2))


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the row-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    if len(targets) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i + 1]]; a confidence of exactly 0 cannot occur.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def brier_score(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean over rows of the squared distance between the probabilities and the one-hot truth."""
    if len(targets) == 0:
        return 0.0
    one_hot = np.zeros_like(probabilities, dtype=np.float64)
    one_hot[np.arange(len(targets)), targets] = 1.0
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def calibration_summary(
    test_logits: np.ndarray, test_targets: np.ndarray, temperature: float
) -> dict[str, float]:
    """ECE, Brier and NLL on held-out rows at T = 1 and at the fitted T."""
    before = np.exp(log_softmax(np.asarray(test_logits, np.float64)))
    after = np.exp(log_softmax(np.asarray(test_logits, np.float64) / temperature))
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(before, test_targets),
        "ece_after": expected_calibration_error(after, test_targets),
        "brier_before": brier_score(before, test_targets),
        "brier_after": brier_score(after, test_targets),
        "nll_before": nll(test_logits, test_targets),
        "nll_after": nll(test_logits, test_targets, temperature),
        "support": len(test_targets),
    }


def case_rows(
    task: Task,
    columns: slice,
    raw_all: np.ndarray,
    raw_outputs: RawOutputs,
    data: EmbeddedSet,
    rows: np.ndarray,
    missing: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of one case on ``rows``: rows with every modality (``missing`` None),
    or rows without ``missing``: those that lack it (but carry another) plus those that have
    every modality with it masked."""
    rows = task.present(rows)
    complete = rows[data.all_present()[rows]]
    if missing is None:
        picked = complete if len(complete) else rows
        return raw_all[picked, columns], task.targets[picked]
    others = [m for m in data.modalities if m != missing]
    carries_other = np.any(np.stack([data.masks[m][rows] for m in others]), axis=0)
    lacking = rows[~data.masks[missing][rows] & carries_other]
    masked = raw_outputs(complete, {m: np.full(len(complete), m != missing) for m in data.modalities})
    logits = np.concatenate([masked[:, columns], raw_all[lacking, columns]])
    return logits, np.concatenate([task.targets[complete], task.targets[lacking]])


def calibrate_task(
    task: Task,
    columns: slice,
    raw_all: np.ndarray,
    raw_outputs: RawOutputs,
    data: EmbeddedSet,
    val_rows: np.ndarray,
    test_rows: np.ndarray,
    missing_cases: Sequence[str],
    enabled: bool,
) -> tuple[Task, dict[str, Any]]:
    """Fits the temperatures of one classification task on validation rows, one per case (every
    modality, and each of ``missing_cases`` missing), and measures them on test rows."""
    val_logits, val_targets = case_rows(task, columns, raw_all, raw_outputs, data, val_rows, None)
    temperature = fit_temperature(val_logits, val_targets) if enabled else 1.0
    summary = calibration_summary(
        *case_rows(task, columns, raw_all, raw_outputs, data, test_rows, None), temperature
    )
    missing_temperatures, missing_summary = {}, {}
    for missing in missing_cases:
        logits, targets = case_rows(task, columns, raw_all, raw_outputs, data, val_rows, missing)
        fitted = fit_temperature(logits, targets) if enabled else 1.0
        missing_temperatures[missing] = fitted
        missing_summary[missing] = calibration_summary(
            *case_rows(task, columns, raw_all, raw_outputs, data, test_rows, missing), fitted
        )
    if missing_summary:
        summary["missing"] = missing_summary
    spec = dataclasses.replace(task.spec, temperature=temperature, missing_temperatures=missing_temperatures)
    return dataclasses.replace(task, spec=spec), summary
