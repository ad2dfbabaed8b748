"""Faithfulness of a map: deletion and insertion curves (RISE, Petsiuk et al. 2018).

A map is faithful when the pixels it ranks first are the ones the score depends on: deleting them
first makes the label's probability fall fast (low deletion AUC), restoring them first onto a blank
image makes it rise fast (high insertion AUC).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def pixel_order(cam_map: np.ndarray) -> np.ndarray:
    """Pixels from the most to the least salient (ties in raster order)."""
    return np.argsort(-cam_map.reshape(-1), kind="stable")


def faithfulness(module: torch.nn.Module, image: torch.Tensor, cam_map: np.ndarray, column: int,
                 probability: Callable[[np.ndarray], np.ndarray], steps: int = 16) -> tuple[float, float]:
    """Deletion and insertion AUC of one map: the label's probability as the most salient pixels
    are replaced by the mean pixel (deletion; lower is better) or restored onto an all-mean image
    (insertion; higher is better), in `steps` equal steps of the pixel count. `image` is one
    normalised model input (1 × C × H × W); `probability` turns the module's logits (n × labels)
    into the run's probabilities."""
    import torch

    height, width = cam_map.shape
    order = torch.from_numpy(pixel_order(cam_map))
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * height * width).astype(int)
    keep = torch.zeros(steps + 1, height * width)
    for k, count in enumerate(counts):
        keep[k, order[:count]] = 1.0
    keep = keep.view(steps + 1, 1, height, width).to(image.device)
    deleted = image * (1.0 - keep)          # zero in normalised space is the mean pixel
    inserted = image * keep
    with torch.no_grad():
        logits = module(torch.cat([deleted, inserted])).double().cpu().numpy()
    curve = probability(logits)[:, column]
    return float(np.trapezoid(curve[: steps + 1], fractions)), float(np.trapezoid(curve[steps + 1:], fractions))
