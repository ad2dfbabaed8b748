"""Faithfulness of maps: deletion and insertion AUCs match the curves computed by hand on a model
whose evidence is known, and the layer selection picks the lowest mean deletion AUC on val."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedstore.cam.faithfulness import faithfulness
from embedstore.cam.layouts import candidate_layers
from embedstore.cam.workspace import CamSettings, Workspace
from embedstore.errors import InputError
from embedstore.store import Store


class _QuadrantScore(torch.nn.Module):
    """A model whose only output is the mean of the top-left quadrant (already a probability in [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :8, :8].mean(dim=(1, 2, 3))[:, None]


def test_deletion_and_insertion_reward_the_map_that_finds_the_evidence() -> None:
    image = torch.ones(1, 3, 16, 16)
    right = np.zeros((16, 16), np.float32)
    right[:8, :8] = 1.0
    right += np.linspace(0, 0.1, 256, dtype=np.float32).reshape(16, 16)
    wrong = 1.0 - right

    def identity(logits: np.ndarray) -> np.ndarray:
        return logits

    good = faithfulness(_QuadrantScore(), image, right, 0, identity, steps=16)
    bad = faithfulness(_QuadrantScore(), image, wrong, 0, identity, steps=16)
    # Brute force: deleting the quadrant first drops the score linearly over the first quarter of the pixels.
    fractions = np.linspace(0, 1, 17)
    expected_deletion = np.trapezoid(np.clip(1 - fractions / 0.25, 0, 1), fractions)
    assert good[0] == pytest.approx(expected_deletion, abs=1e-6)
    assert good[1] == pytest.approx(1 - expected_deletion, abs=1e-6)
    assert bad[0] == pytest.approx(1 - expected_deletion, abs=1e-6)
    assert bad[1] == pytest.approx(expected_deletion, abs=1e-6)


def test_select_layer_picks_the_lowest_mean_deletion_auc_on_val(cam_store: tuple[Store, dict[str, str]]) -> None:
    store, runs = cam_store
    workspace = Workspace(store, runs["ft-study"], CamSettings(select_layer=True, select_maps=6, device="cpu"))
    assert set(workspace.layer_selection) == set(candidate_layers(workspace.subject.visual))
    assert workspace.layout.layer_name == min(workspace.layer_selection, key=workspace.layer_selection.get)
    with pytest.raises(InputError, match="the layer selection picks the layer itself") as error:
        Workspace(store, runs["ft-study"], CamSettings(select_layer=True, layer="transformer.resblocks.0"))
    assert "--" not in str(error.value)
