"""The transformers loading path for any local BERT-like model (tiny random weights, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from services.text.embedding import TextEmbedder

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "far", "away"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=16).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16,
    )  # fmt: skip
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_local_bert_loads_and_pools(tiny_bert: Path, pooling: str) -> None:
    embedder = TextEmbedder(str(tiny_bert), pooling=pooling)
    description = embedder.load()
    assert description.embedding_dim == 32
    assert description.model_id == str(tiny_bert)
    assert description.max_input_tokens == 16
    batch = embedder.process(["the cat sat", "a dog ran far away"])
    assert batch.vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)

    model = BertModel.from_pretrained(tiny_bert).eval()
    tokens = BertTokenizerFast.from_pretrained(tiny_bert)(["the cat sat"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state[0]
    expected = hidden[0] if pooling == "cls" else hidden.mean(dim=0)
    expected = (expected / expected.norm()).numpy()
    np.testing.assert_allclose(batch.vectors[0], expected, atol=1e-5)


def test_inputs_over_the_model_limit_are_truncated_and_flagged(tiny_bert: Path) -> None:
    embedder = TextEmbedder(str(tiny_bert))
    embedder.load()
    batch = embedder.process(["the cat", " ".join(WORDS * 3)])
    assert batch.truncated.tolist() == [False, True]
    assert batch.token_counts.tolist() == [4, 16]


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pooling"):
        TextEmbedder(pooling="max")


def test_full_clip_checkpoint_serves_its_projected_text_tower(tmp_path: Path) -> None:
    import json

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    tokens = ["<|startoftext|>", "<|endoftext|>", "a</w>", "cat</w>", "photo</w>", "of</w>", "c", "a", "t"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizerFast(
        vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt")
    )
    tokenizer.save_pretrained(tmp_path)
    text = {"vocab_size": len(tokens), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    clip.save_pretrained(tmp_path)

    embedder = TextEmbedder(str(tmp_path))
    assert embedder.load().embedding_dim == 24
    served = embedder.process(["a photo of a cat"]).vectors[0]
    with torch.no_grad():
        expected = clip.get_text_features(**tokenizer(["a photo of a cat"], return_tensors="pt"))
    expected = getattr(expected, "pooler_output", expected)[0]
    np.testing.assert_allclose(served, (expected / expected.norm()).numpy(), atol=1e-5)
