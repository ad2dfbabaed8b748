"""A stored run rebuilt for Grad-CAM: every mode's scorer reproduces the scores the run stored, its
probabilities follow the run's protocol, and an unknown run or label is one clear error naming the
value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedstore.cam.methods import compute_maps
from embedstore.cam.subject import load_subject
from embedstore.cam.workspace import CamSettings, Workspace
from embedstore.errors import InputError
from embedstore.store import Store
from tests.model_fixtures import CAM_RUN_KINDS, count_hooks


@pytest.mark.parametrize("kind", [f"{m}-{p}" for m, p, _ in CAM_RUN_KINDS])
def test_each_target_kind_is_the_score_the_run_stored(cam_store: tuple[Store, dict[str, str]], kind: str) -> None:
    store, runs = cam_store
    workspace = Workspace(store, runs[kind], CamSettings(device="cpu"))
    ids = [int(s) for s in workspace.run.sample_ids[:6]]
    with torch.no_grad():
        logits = workspace.subject.module(workspace.inputs(workspace.pixels(ids))).double().numpy()
    np.testing.assert_allclose(logits, workspace.run.scores[:6], rtol=2e-4, atol=2e-4)
    maps = compute_maps(workspace.subject.module, workspace.layout, workspace.inputs(workspace.pixels(ids[:2])),
                        [0, 3])
    assert maps.shape == (2, 48, 48) and maps.min() >= 0 and maps.max() <= 1
    assert count_hooks(workspace.subject.module) == 0


def test_probabilities_follow_each_runs_protocol(cam_store: tuple[Store, dict[str, str]]) -> None:
    store, runs = cam_store
    logits = np.array([[2.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    study = load_subject(store, runs["zs-study"], torch.device("cpu"))
    np.testing.assert_allclose(study.probabilities(logits), [[1.0, 0.0, 1 / 3], [0.0, 0.0, 0.0]])
    for kind in ("lp-multilabel", "zs-multilabel"):          # a head's logit, a posneg log-odds
        subject = load_subject(store, runs[kind], torch.device("cpu"))
        np.testing.assert_allclose(subject.probabilities(logits), 1 / (1 + np.exp(-logits)))


def test_validate_refuses_a_run_that_is_not_there(cam_store: tuple[Store, dict[str, str]]) -> None:
    store, _ = cam_store
    with pytest.raises(InputError, match="run 'nope': no complete run") as error:
        load_subject(store, "nope", torch.device("cpu"))
    assert "--" not in str(error.value)


def test_an_unknown_label_is_named_with_the_runs_labels(cam_store: tuple[Store, dict[str, str]]) -> None:
    store, runs = cam_store
    subject = load_subject(store, runs["lp-multilabel"], torch.device("cpu"))
    with pytest.raises(InputError, match="label 'Heart Attack': run .* has no such label \\(it has ") as error:
        subject.column("Heart Attack")
    assert "--" not in str(error.value)
