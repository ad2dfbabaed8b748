"""The model-randomisation sanity check (Adebayo et al. 2018): redraw a copy of the model's
parameters stage by stage from the output down, and see whether the maps change.

A method whose maps barely change once every stage is redrawn does not depend on what the model
learnt, so its maps cannot explain the model; such a method is flagged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from embedstore.cam.layouts import BLOCK_CONTAINERS, CamLayout, cam_layout

if TYPE_CHECKING:
    import torch

#: A method whose maps keep at least this Spearman correlation with the trained model's maps once
#: every stage is redrawn is flagged: its maps do not depend on what the model learnt.
SANITY_FLAG_RHO = 0.5


@dataclass(frozen=True)
class SanityStage:
    """Mean Spearman correlation between trained and randomised maps once `stage` (and every stage
    above it) is redrawn, over `n_maps` maps where both are not flat."""

    stage: str
    spearman: float
    n_maps: int


def randomisation_stages(module: torch.nn.Module, prefix: str = "") -> list[tuple[str, list[torch.nn.Parameter]]]:
    """The module's parameters grouped into stages from the output down to the input: the head,
    the projection, each block from the last to the first, then the embeddings."""
    stages: list[tuple[str, list[torch.nn.Parameter]]] = []
    direct = list(module.parameters(recurse=False))
    if direct:
        stages.append((prefix or "(root)", direct))
    for name, child in reversed(list(module.named_children())):
        path = f"{prefix}.{name}" if prefix else name
        params = list(child.parameters())
        if not params:
            continue
        if name in BLOCK_CONTAINERS:
            blocks = list(enumerate(cast("Sequence[torch.nn.Module]", child)))
            stages.extend((f"{path}.{i}", list(block.parameters())) for i, block in reversed(blocks))
        elif any(n.split(".")[-1] in BLOCK_CONTAINERS for n, _ in child.named_modules() if n):
            stages.extend(randomisation_stages(child, path))
        else:
            stages.append((path, params))
    return stages


def randomise(parameters: list[torch.nn.Parameter], generator: torch.Generator) -> None:
    """Redraw each tensor from N(0, σ²) with σ its own standard deviation: same scale, no learnt structure."""
    import torch

    with torch.no_grad():
        for tensor in parameters:
            std = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
            noise = torch.randn(tensor.shape, generator=generator) * (std if std > 0 else 0.02)
            tensor.copy_(noise.to(tensor.dtype))


def randomised_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy to randomise stage by stage; the original stays untouched."""
    return copy.deepcopy(module)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels; NaN when either map is flat."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a.reshape(-1), b.reshape(-1)).statistic)


def cascading_randomisation(module: torch.nn.Module, layer_name: str, trained: Sequence[np.ndarray],
                            maps_of: Callable[[torch.nn.Module, CamLayout], list[np.ndarray]], seed: int
                            ) -> tuple[list[SanityStage], torch.nn.Module]:
    """Redraw a copy of `module` stage by stage top-down, one more stage each step, and compare
    each step's maps with `trained` (the trained model's maps of the same pairs, in order).
    `maps_of(copy, layout)` computes those pairs' maps under the copy, hooked at `layer_name`.
    Returns the stages and the fully randomised copy."""
    import torch

    randomised = randomised_copy(module)
    generator = torch.Generator().manual_seed(seed)
    stages = []
    for name, parameters in randomisation_stages(randomised):
        randomise(parameters, generator)
        maps = maps_of(randomised, cam_layout(cast("torch.nn.Module", randomised.visual), layer_name))
        rhos = np.array([spearman(t, m) for t, m in zip(trained, maps, strict=True)])
        finite = rhos[np.isfinite(rhos)]
        stages.append(SanityStage(name, float(finite.mean()) if len(finite) else float("nan"), int(len(finite))))
    return stages, randomised


def flagged(stages: Sequence[SanityStage]) -> bool:
    """Whether the maps still correlate with the trained ones (ρ ≥ SANITY_FLAG_RHO) once every
    stage is redrawn."""
    final = stages[-1].spearman if stages else float("nan")
    return bool(np.isfinite(final) and final >= SANITY_FLAG_RHO)
