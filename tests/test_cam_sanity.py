"""The model-randomisation check: stages run from the output down and cover every parameter, the
trained model is never touched, and a method is flagged exactly when its maps survive full
randomisation."""

from __future__ import annotations

import numpy as np
import torch

from embedstore.cam.sanity import SANITY_FLAG_RHO, SanityStage, flagged, randomisation_stages, randomise, randomised_copy
from embedstore.cam.subject import head_model
from embedstore.heads import Head
from embedstore.models import load_model


def test_randomisation_runs_top_down_and_leaves_the_trained_model_alone(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), True))
    names = [name for name, _ in randomisation_stages(module)]
    assert names[0] == "head"
    blocks = [n for n in names if "resblocks" in n]
    assert blocks == ["visual.transformer.resblocks.2", "visual.transformer.resblocks.1", "visual.transformer.resblocks.0"]
    assert names.index("visual.ln_post") < names.index(blocks[0]) < names.index("visual.conv1")
    assert sum(len(p) for _, p in randomisation_stages(module)) == len(list(module.parameters()))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    copy = randomised_copy(module)
    for _, parameters in randomisation_stages(copy):
        randomise(parameters, torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    changed = [k for k, v in copy.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) == len(before)


def test_the_flag_reads_the_last_stage_against_the_threshold() -> None:
    def stages(*rhos: float) -> list[SanityStage]:
        return [SanityStage(f"s{i}", rho, 4) for i, rho in enumerate(rhos)]

    assert flagged(stages(0.1, SANITY_FLAG_RHO))                 # the last stage decides, at the threshold
    assert not flagged(stages(0.9, SANITY_FLAG_RHO - 0.01))
    assert not flagged(stages(0.9, float("nan")))                # every map flat: nothing to compare
    assert not flagged([])
