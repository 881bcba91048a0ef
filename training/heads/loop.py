"""The optimisation loop every head shares: AdamW, shuffled mini-batches, early stopping.

On a terminal a progress bar shows the epochs; elsewhere (CI, ``nohup``, a pod's log) each epoch
is one log line instead, so a long run can be followed from its log. The history of every epoch
is returned (and saved beside the head as ``history.json``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

_LOGGER = logging.getLogger(__name__)

# Smallest drop in validation loss that counts as progress; below it (a saturated, ever more
# confident model) further epochs only overfit.
MIN_LOSS_DELTA = 1e-3

# (rows of one batch, generator) -> loss; () -> (validation score, validation loss, details)
BatchLoss = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Validate = Callable[[], tuple[float, float, dict[str, Any]]]


def improved(score: float, loss: float, best: tuple[float, float] | None) -> bool:
    """Higher validation score wins; an equal score wins with a clearly lower validation loss."""
    if best is None:
        return True
    return score > best[0] + 1e-9 or (abs(score - best[0]) <= 1e-9 and loss < best[1] - MIN_LOSS_DELTA)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Runs a head's training on one intra-op thread, then restores the count.

    A head is a few small matrices: more threads only add OpenMP hand-offs, and on a busy
    machine they spin against each other (measured on 2 shared cores: one 16-epoch training
    of a small weighted_sum head 1.5 s on one thread, 29.6 s on two).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(
    model: torch.nn.Module,
    batch_loss: BatchLoss,
    validate: Validate,
    train_rows: np.ndarray,
    cfg: Any,
    desc: str,
) -> tuple[list[dict[str, Any]], int]:
    """Trains ``model`` in place; keeps the best epoch's weights. Returns (history, best epoch)."""
    with one_torch_thread():
        return _fit(model, batch_loss, validate, train_rows, cfg, desc)


def _fit(
    model: torch.nn.Module,
    batch_loss: BatchLoss,
    validate: Validate,
    train_rows: np.ndarray,
    cfg: Any,
    desc: str,
) -> tuple[list[dict[str, Any]], int]:
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows = torch.from_numpy(train_rows)
    best: tuple[float, float] | None = None
    best_state, best_epoch, stale = None, 0, 0
    history: list[dict[str, Any]] = []
    # disable=None: tqdm draws only on a terminal; elsewhere log lines take its place.
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=None if cfg.progress else True)
    log_epochs = bool(cfg.progress and bar.disable)
    for epoch in bar:
        model.train()
        total, seen = 0.0, 0
        for batch in rows[torch.randperm(len(rows), generator=generator)].split(cfg.batch_size):
            loss = batch_loss(batch, generator)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        model.eval()
        with torch.no_grad():
            val_score, val_loss, details = validate()
        entry = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss, "val_score": val_score}
        if details:
            entry["val"] = details
        history.append(entry)
        bar.set_postfix(loss=f"{total / seen:.3f}", val_loss=f"{val_loss:.3f}", val=f"{val_score:.3f}")
        if improved(val_score, val_loss, best):
            best, best_epoch, stale = (val_score, val_loss), epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if log_epochs:
            _LOGGER.info(
                "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_score %.4f (best epoch %d)",
                desc, epoch, cfg.epochs, total / seen, val_loss, val_score, best_epoch,
            )  # fmt: skip
        if stale >= cfg.patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch
