"""Test-only text service whose forward pass raises for any batch holding ``FAIL_MARKER``.

Run as ``python -m tests.support.faulty_text``; everything else is the real service and model.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.text.__main__ import main
from services.text.embedding import EmbeddingBatch, TextEmbedder

FAIL_MARKER = "mmserve-inject-forward-failure"


class FaultyTextEmbedder(TextEmbedder):
    def process(self, texts: Sequence[str]) -> EmbeddingBatch:
        if any(FAIL_MARKER in text for text in texts):
            raise RuntimeError("injected forward-pass failure")
        return super().process(texts)


if __name__ == "__main__":
    main(embedder_factory=FaultyTextEmbedder)
