"""Grad-CAM core: both ViT kinds, zs and head targets, the token grid from the model, hooks released."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedstore.errors import InputError
from embedstore.gradcam import HeadTarget, SimilarityTarget, compute_maps, head_model, vit_layout
from embedstore.models import load_model


def _hooks(module: torch.nn.Module) -> int:
    return len(module._forward_hooks) + len(module._backward_hooks) + len(getattr(module, "_forward_pre_hooks", {}))


@pytest.mark.parametrize("fixture, grid", [("native_model", (6, 6)), ("biomedclip_shaped", (7, 7))])
def test_maps_for_zero_shot_and_head_targets_on_both_vit_kinds(fixture: str, grid: tuple[int, int],
                                                              request: pytest.FixtureRequest) -> None:
    loaded = load_model(request.getfixturevalue(fixture))
    visual = loaded.model.visual
    layout = vit_layout(visual)
    size = loaded.image_size
    assert layout.grid((size, size)) == grid
    images = torch.randn(2, 3, size, size)
    text = np.random.default_rng(0).normal(size=loaded.embed_dim)
    for cosine in (False, True):
        maps = compute_maps(visual, layout, images, [SimilarityTarget(text, cosine)] * 2)
        assert maps.shape == (2, size, size) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
    head = head_model(visual, np.random.default_rng(1).normal(size=(3, loaded.embed_dim)), np.zeros(3), True)
    maps = compute_maps(head, layout, images, [HeadTarget(0), HeadTarget(2)], method="hirescam")
    assert maps.shape == (2, size, size)
    assert _hooks(layout.layer) == 0


def test_reshape_uses_the_models_grid_and_names_a_mismatch(biomedclip_shaped: str) -> None:
    layout = vit_layout(load_model(biomedclip_shaped).model.visual)
    reshape = layout.reshape_transform((112, 112))
    assert tuple(reshape(torch.zeros(2, 1 + 49, 8)).shape) == (2, 8, 7, 7)
    with pytest.raises(InputError, match="do not form the 7×7 patch grid"):
        reshape(torch.zeros(2, 1 + 196, 8))


def test_hooks_are_released_after_an_exception(native_model: str) -> None:
    loaded = load_model(native_model)
    layout = vit_layout(loaded.model.visual)

    def failing(output: torch.Tensor) -> torch.Tensor:
        raise IndexError("label out of range")

    before = _hooks(layout.layer)
    with pytest.raises(IndexError):
        compute_maps(loaded.model.visual, layout, torch.randn(1, 3, 48, 48), [failing])
    assert _hooks(layout.layer) == before == 0


def test_bad_layer_and_method_are_clear_errors(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    with pytest.raises(InputError, match="--layer transformer.nope"):
        vit_layout(visual, "transformer.nope")
    with pytest.raises(InputError, match="--method"):
        compute_maps(visual, vit_layout(visual), torch.randn(1, 3, 48, 48), [HeadTarget(0)], method="magic")
