"""Fusion strategies: output shapes and the documented missing-modality rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from services.fusion.strategies import (
    CLASSIFICATION_STRATEGIES,
    DECISION_STRATEGIES,
    FUSION_STRATEGIES,
    AlignmentHead,
    FusionModel,
    build_model,
    contrastive_loss,
    resolve_config,
)

TEXT_DIM, IMAGE_DIM, N = 12, 20, 6
CONFIG = {"fused_dim": 8, "hidden_dim": 16, "dropout": 0.0}


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(N, TEXT_DIM, generator=generator)
    image = torch.randn(N, IMAGE_DIM, generator=generator) * 3 + 1
    return text, image


def _model(strategy: str, num_labels: int = 3, seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return build_model(strategy, TEXT_DIM, IMAGE_DIM, CONFIG, num_outputs=num_labels).eval()


ALL = torch.ones(N, dtype=torch.bool)
NONE = torch.zeros(N, dtype=torch.bool)
MIXED_TEXT = torch.tensor([True, True, False, True, False, True])
MIXED_IMAGE = torch.tensor([True, False, True, True, True, False])


@pytest.mark.parametrize("strategy", CLASSIFICATION_STRATEGIES)
def test_shapes(strategy: str) -> None:
    model = _model(strategy, num_labels=5)
    text, image = _inputs()
    with torch.no_grad():
        assert model.embed(text, image, ALL, ALL).shape == (N, CONFIG["fused_dim"])
        assert model(text, image, MIXED_TEXT, MIXED_IMAGE).shape == (N, 5)


@pytest.mark.parametrize("strategy", CLASSIFICATION_STRATEGIES)
def test_absent_rows_are_ignored_even_when_nan(strategy: str) -> None:
    """Whatever sits in a masked-out row (garbage, NaN) must not change any output."""
    model = _model(strategy)
    text, image = _inputs()
    garbage_text, garbage_image = text.clone(), image.clone()
    garbage_text[~MIXED_TEXT] = float("nan")
    garbage_image[~MIXED_IMAGE] = 1e6
    with torch.no_grad():
        clean = model(text, image, MIXED_TEXT, MIXED_IMAGE)
        dirty = model(garbage_text, garbage_image, MIXED_TEXT, MIXED_IMAGE)
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(clean, dirty)


@pytest.mark.parametrize("strategy", CLASSIFICATION_STRATEGIES)
def test_rows_are_independent(strategy: str) -> None:
    """Each row's output depends only on that row (no batch statistics at inference)."""
    model = _model(strategy)
    text, image = _inputs()
    with torch.no_grad():
        batch = model(text, image, MIXED_TEXT, MIXED_IMAGE)
        for row in range(N):
            one = model(
                text[row : row + 1],
                image[row : row + 1],
                MIXED_TEXT[row : row + 1],
                MIXED_IMAGE[row : row + 1],
            )
            torch.testing.assert_close(batch[row : row + 1], one)


def test_format1_weighted_sum_mixes_with_softmax_weights_and_renormalises_over_present() -> None:
    torch.manual_seed(0)
    model = build_model(
        "weighted_sum", TEXT_DIM, IMAGE_DIM, {**CONFIG, "branch_norm": 0}, num_outputs=3
    ).eval()
    fusion = model.fusion
    with torch.no_grad():
        fusion.modality_logits.copy_(torch.tensor([0.3, -0.5]))
    text, image = _inputs()
    with torch.no_grad():
        p_text = fusion.proj_text(text)
        p_image = fusion.proj_image(image)
        w_text = math.exp(0.3) / (math.exp(0.3) + math.exp(-0.5))
        torch.testing.assert_close(fusion(text, image, ALL, ALL), w_text * p_text + (1 - w_text) * p_image)
        # One modality present: its weight becomes 1, not its share of the two-way softmax.
        torch.testing.assert_close(fusion(text, image, ALL, NONE), p_text)
        torch.testing.assert_close(fusion(text, image, NONE, ALL), p_image)
        weights = fusion.modality_weights(MIXED_TEXT, MIXED_IMAGE)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(N))
    assert weights[1].tolist() == [1.0, 0.0] and weights[2].tolist() == [0.0, 1.0]


def test_concat_mlp_substitutes_the_learned_missing_vector() -> None:
    model = _model("concat_mlp")
    fusion = model.fusion
    text, image = _inputs()
    with torch.no_grad():
        fusion.missing_image.copy_(torch.linspace(-1, 1, IMAGE_DIM))
        expected = fusion.mlp(torch.cat([fusion.norm_text(text), fusion.missing_image.expand(N, -1)], dim=-1))
        torch.testing.assert_close(fusion(text, image, ALL, NONE), expected)
        before = fusion(text, image, ALL, NONE)
        fusion.missing_image.add_(0.5)  # the placeholder is a parameter: it changes the output
        assert not torch.allclose(before, fusion(text, image, ALL, NONE))


def test_concat_mlp_missing_vectors_learn_from_modality_dropout() -> None:
    model = _model("concat_mlp")
    text, image = _inputs()
    loss = model(text, image, ALL, MIXED_IMAGE).sum()
    loss.backward()
    assert model.fusion.missing_image.grad is not None and model.fusion.missing_image.grad.abs().sum() > 0
    assert model.fusion.missing_text.grad is None or model.fusion.missing_text.grad.abs().sum() == 0


def test_gated_forces_the_gate_to_the_present_modality() -> None:
    model = _model("gated")
    fusion = model.fusion
    text, image = _inputs()
    with torch.no_grad():
        only_text = torch.tanh(fusion.proj_text(fusion.norm_text(text)))
        only_image = torch.tanh(fusion.proj_image(fusion.norm_image(image)))
        torch.testing.assert_close(fusion(text, image, ALL, NONE), only_text)
        torch.testing.assert_close(fusion(text, image, NONE, ALL), only_image)
        both = fusion(text, image, ALL, ALL)
        # With both present the gate is per sample and strictly between the two.
        assert not torch.allclose(both, only_text) and not torch.allclose(both, only_image)


@pytest.mark.parametrize("strategy,ignored", [("text_only", "image"), ("image_only", "text")])
def test_single_modality_baselines_ignore_the_other_modality(strategy: str, ignored: str) -> None:
    model = _model(strategy)
    text, image = _inputs()
    other_text, other_image = _inputs(seed=1)
    with torch.no_grad():
        base = model(text, image, ALL, ALL)
        if ignored == "image":
            torch.testing.assert_close(base, model(text, other_image, ALL, ALL))
            assert not torch.allclose(base, model(other_text, image, ALL, ALL))
            assert torch.count_nonzero(model.embed(text, image, NONE, ALL)) == 0
        else:
            torch.testing.assert_close(base, model(other_text, image, ALL, ALL))
            assert not torch.allclose(base, model(text, other_image, ALL, ALL))
            assert torch.count_nonzero(model.embed(text, image, ALL, NONE)) == 0


def test_registry_and_config_validation() -> None:
    assert set(FUSION_STRATEGIES) == set(DECISION_STRATEGIES) > set(CLASSIFICATION_STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        build_model("nope", TEXT_DIM, IMAGE_DIM, {})
    with pytest.raises(ValueError, match="unknown config keys.*'width'"):
        resolve_config("gated", {"width": 3})
    assert resolve_config("alignment", {"fused_dim": 4}) == {"fused_dim": 4, "init_temperature": 0.07}


def test_alignment_head_projects_to_unit_vectors_with_clamped_scale() -> None:
    torch.manual_seed(0)
    head = build_model("alignment", TEXT_DIM, IMAGE_DIM, {"fused_dim": 8})
    assert isinstance(head, AlignmentHead)
    text, image = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(head.project_text(text).norm(dim=1), torch.ones(N))
        torch.testing.assert_close(head.project_image(image).norm(dim=1), torch.ones(N))
        assert head.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
        logits = head(text, image)
        assert logits.shape == (N, N)
        torch.testing.assert_close(
            logits, head.logit_scale * head.project_image(image) @ head.project_text(text).T
        )
        head.log_logit_scale.fill_(10.0)  # e^10 >> 100
        assert head.logit_scale.item() == pytest.approx(100.0)
        embedded = head.embed(text, image, MIXED_TEXT, MIXED_IMAGE)
        torch.testing.assert_close(embedded.norm(dim=1), torch.ones(N))
        torch.testing.assert_close(embedded[1], head.project_text(text[1:2])[0])
        torch.testing.assert_close(embedded[2], head.project_image(image[2:3])[0])


def test_contrastive_loss_is_symmetric_infonce() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, generator=generator)
    expected = 0.5 * (
        -torch.log_softmax(logits, dim=1).diagonal().mean()
        - torch.log_softmax(logits, dim=0).diagonal().mean()
    )
    torch.testing.assert_close(contrastive_loss(logits), expected)
    aligned = torch.eye(5) * 20
    assert contrastive_loss(aligned) < 1e-6 < contrastive_loss(aligned.roll(1, dims=0))
    assert F.cross_entropy(logits, torch.arange(5)) != contrastive_loss(logits)  # both directions count


def test_weighted_sum_normalises_branches_so_the_weights_are_the_modalities_shares() -> None:
    model = _model("weighted_sum")
    fusion = model.fusion
    with torch.no_grad():
        fusion.modality_logits.copy_(torch.tensor([0.3, -0.5]))
        # Scale one projection up 100x: without normalisation it would drown the other branch.
        fusion.proj_image[1].weight.mul_(100)
        fusion.missing.copy_(torch.randn(2, CONFIG["fused_dim"]))
    text, image = _inputs()
    w_text = math.exp(0.3) / (math.exp(0.3) + math.exp(-0.5))
    assert fusion.learned_weights() == pytest.approx({"text": w_text, "image": 1 - w_text})
    with torch.no_grad():
        n_text = F.layer_norm(fusion.proj_text(text), (CONFIG["fused_dim"],))
        n_image = F.layer_norm(fusion.proj_image(image), (CONFIG["fused_dim"],))
        assert n_image.std(dim=1, unbiased=False).allclose(torch.ones(N), atol=1e-3)
        torch.testing.assert_close(fusion(text, image, ALL, ALL), w_text * n_text + (1 - w_text) * n_image)
        # A missing modality keeps its weight; its branch is the learned placeholder.
        torch.testing.assert_close(
            fusion(text, image, ALL, NONE), w_text * n_text + (1 - w_text) * fusion.missing[1]
        )
        torch.testing.assert_close(
            fusion(text, image, NONE, ALL), w_text * fusion.missing[0] + (1 - w_text) * n_image
        )
        assert torch.count_nonzero(fusion(text, image, NONE, NONE)) == 0


def test_attention_masks_a_missing_modality_out_of_every_token() -> None:
    """A masked modality gives exactly the output of the row without it, whatever its values."""
    model = _model("attention")
    text, image = _inputs()
    other_image = torch.full_like(image, float("nan"))
    with torch.no_grad():
        without = model(text, torch.zeros_like(image), ALL, NONE)
        torch.testing.assert_close(model(text, image, ALL, NONE), without)
        torch.testing.assert_close(model(text, other_image, ALL, NONE), without)
        assert not torch.allclose(model(text, image, ALL, ALL), without)
        weights = model.fusion.attention_weights(text, image, MIXED_TEXT, MIXED_IMAGE)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(N))
    assert (weights >= 0).all()
    assert weights[1, 2] == 0 and weights[2, 1] == 0  # row 1 has no image, row 2 no text


def test_attention_config_is_checked() -> None:
    with pytest.raises(ValueError, match="multiple of num_heads"):
        resolve_config("attention", {"fused_dim": 10, "num_heads": 4})
    with pytest.raises(ValueError, match="whole number"):
        resolve_config("attention", {"num_layers": 1.5})
    config = resolve_config("attention", {})
    assert config["num_layers"] >= 1 and config["tokens_per_modality"] >= 1 and config["dropout"] == 0.0
    model = build_model("attention", TEXT_DIM, IMAGE_DIM, {"fused_dim": 8, "num_layers": 2}, num_outputs=2)
    assert len(model.fusion.layers) == 2
