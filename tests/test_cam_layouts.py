"""Grad-CAM hook layouts: both ViT kinds and both CNN kinds are hooked at their default layer with
the model's own token grid, candidate layers are listed bottom to top, and a bad layer or a token
count off the grid is one clear error naming the value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.cam.layouts import cam_layout, candidate_layers
from embedstore.cam.methods import compute_maps
from embedstore.cam.subject import head_model
from embedstore.cam.workspace import CamSettings, Workspace
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.heads import Head
from embedstore.models import load_model
from embedstore.store import Store
from tests.model_fixtures import count_hooks


def test_biomedclip_shaped_run_is_hooked_at_the_studys_layer_with_its_own_grid(
        synthetic_store: Store, biomedclip_shaped: str) -> None:
    run_id = extract(synthetic_store, ExtractConfig(mode="zs", model=biomedclip_shaped, data="syn", protocol="study",
                                                    encode_batch_size=64)).run_id
    workspace = Workspace(synthetic_store, run_id, CamSettings(device="cpu"))
    assert workspace.layout.layer_name == "trunk.blocks.-3.attn.proj"
    assert workspace.layout.grid((112, 112)) == (7, 7)
    ids = [int(s) for s in workspace.run.sample_ids[:3]]
    with torch.no_grad():
        logits = workspace.subject.module(workspace.inputs(workspace.pixels(ids))).double().numpy()
    np.testing.assert_allclose(logits, workspace.run.scores[:3], rtol=2e-4, atol=2e-4)
    maps = compute_maps(workspace.subject.module, workspace.layout, workspace.inputs(workspace.pixels(ids)), [1, 2, 9])
    assert maps.shape == (3, 112, 112) and np.isfinite(maps).all()


@pytest.mark.parametrize("maker, layer, candidates", [
    ("make_resnet_clip", "layer4", ["layer1", "layer2", "layer3", "layer4"]),
    ("make_timm_cnn_clip", "trunk.stages.-1", [f"trunk.stages.{i}" for i in range(4)]),
])
def test_cnn_towers_are_hooked_at_their_last_stage(tmp_path: Path, maker: str, layer: str,
                                                   candidates: list[str]) -> None:
    from tests import model_fixtures

    loaded = load_model("local-dir:" + str(getattr(model_fixtures, maker)(tmp_path / "cnn")))
    visual = loaded.model.visual
    layout = cam_layout(visual)
    assert layout.layer_name == layer and layout.reshape_transform((64, 64)) is None
    assert candidate_layers(visual) == candidates
    module = head_model(visual, Head(np.random.default_rng(0).normal(size=(3, 32)), np.zeros(3), True))
    maps = compute_maps(module, layout, torch.randn(2, 3, 64, 64), [0, 2], method="gradcam++")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
    assert count_hooks(module) == 0


def test_reshape_uses_the_models_grid_and_names_a_mismatch(biomedclip_shaped: str) -> None:
    layout = cam_layout(load_model(biomedclip_shaped).model.visual)
    reshape = layout.reshape_transform((112, 112))
    assert reshape is not None
    assert tuple(reshape(torch.zeros(2, 1 + 49, 8)).shape) == (2, 8, 7, 7)
    with pytest.raises(InputError, match="is not the 7×7 patch grid"):
        reshape(torch.zeros(2, 1 + 196, 8))


def test_a_bad_layer_is_a_clear_error_naming_the_value(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    with pytest.raises(InputError, match="layer 'transformer.nope': the image tower has no 'nope' there") as error:
        cam_layout(visual, "transformer.nope")
    assert "--" not in str(error.value)                 # the library names the value, not a CLI flag
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), False))
    with pytest.raises(InputError, match="layer 'conv1': .* is not the 6×6 patch grid"):
        compute_maps(module, cam_layout(visual, "conv1"), torch.randn(1, 3, 48, 48), [0])
