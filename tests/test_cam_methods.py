"""Computing Grad-CAM maps: every method of `choices.CamMethod` has a class, an unknown method is
one clear error naming the value, and the hooks are released after a map and after a failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedstore.cam.layouts import cam_layout
from embedstore.cam.methods import METHODS, compute_maps
from embedstore.cam.subject import head_model
from embedstore.choices import CamMethod
from embedstore.errors import InputError
from embedstore.heads import Head
from embedstore.models import load_model
from tests.model_fixtures import count_hooks


def test_every_method_maps_and_releases_its_hooks(native_model: str) -> None:
    assert set(METHODS) == set(CamMethod)
    visual = load_model(native_model).model.visual
    module = head_model(visual, Head(np.random.default_rng(0).normal(size=(2, 32)), np.zeros(2), False))
    for method in CamMethod:
        maps = compute_maps(module, cam_layout(visual), torch.randn(2, 3, 48, 48), [0, 1], method=method)
        assert maps.shape == (2, 48, 48) and np.isfinite(maps).all(), method
        assert count_hooks(module) == 0, method


def test_hooks_are_released_after_an_exception(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), False))
    layout = cam_layout(visual)
    with pytest.raises(IndexError):
        compute_maps(module, layout, torch.randn(1, 3, 48, 48), [5])   # the head has 2 columns
    assert count_hooks(module) == 0


def test_a_bad_method_is_a_clear_error_naming_the_value(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), False))
    with pytest.raises(InputError, match="method 'magic': choose one of gradcam, gradcam\\+\\+, hirescam") as error:
        compute_maps(module, cam_layout(visual), torch.randn(1, 3, 48, 48), [0], method="magic")
    assert "--" not in str(error.value)
    assert count_hooks(module) == 0
