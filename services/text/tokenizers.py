"""Tokenizers for concurrent forward passes.

A transformers fast tokenizer sets its Rust tokenizer's padding and truncation on each call
whose settings differ from the last, and the Rust side refuses concurrent use while it does
("Already borrowed"). Text models run several forward passes at once (``forward_lanes``), so
each pass borrows a tokenizer of its own from a pool that grows to the number of passes that
ever ran at once (not per thread: a caller that starts a thread per request reuses copies).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TokenizerPool:
    """Lends copies of one loaded tokenizer, one per concurrent user (a copy costs ~50 ms once)."""

    def __init__(self, tokenizer: Any) -> None:
        self._template = tokenizer  # never called, only copied: nothing mutates it
        self._free = [copy.deepcopy(tokenizer)]
        self._lock = threading.Lock()

    @property
    def template(self) -> Any:
        """The loaded tokenizer, for reading its configuration (never for tokenizing)."""
        return self._template

    @contextmanager
    def borrowed(self) -> Iterator[Any]:
        with self._lock:
            tokenizer = self._free.pop() if self._free else None
        if tokenizer is None:
            tokenizer = copy.deepcopy(self._template)
        try:
            yield tokenizer
        finally:
            with self._lock:
                self._free.append(tokenizer)
