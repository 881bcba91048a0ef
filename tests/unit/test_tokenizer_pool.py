"""Concurrent forward passes each tokenize with a tokenizer of their own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from services.text.tokenizers import TokenizerPool


class RecordingTokenizer:
    """Stands in for a tokenizer's state: fails if two threads use one copy at once."""

    def __init__(self) -> None:
        self.in_use = threading.Lock()

    def __deepcopy__(self, memo) -> RecordingTokenizer:
        return RecordingTokenizer()

    def __call__(self, text: str) -> str:
        if not self.in_use.acquire(blocking=False):
            raise RuntimeError("Already borrowed")
        try:
            threading.Event().wait(0.01)
            return text
        finally:
            self.in_use.release()


def test_concurrent_borrowers_never_share_a_copy_and_copies_are_reused() -> None:
    template = RecordingTokenizer()
    pool = TokenizerPool(template)

    def tokenize(i: int) -> str:
        with pool.borrowed() as tokenizer:
            assert tokenizer is not template
            return tokenizer(str(i))

    with ThreadPoolExecutor(max_workers=4) as threads:
        assert list(threads.map(tokenize, range(40))) == [str(i) for i in range(40)]
    assert 1 <= len(pool._free) <= 4, "one copy per borrower that ever ran at once"
    for i in range(10):  # a thread per call (a threaded WSGI server) reuses the pooled copies
        worker = threading.Thread(target=tokenize, args=(i,))
        worker.start()
        worker.join()
    assert len(pool._free) <= 4
