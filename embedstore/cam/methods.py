"""Computing maps: the saliency methods (pytorch-grad-cam classes) keyed by `choices.CamMethod`,
the target that picks one label's score, and the hooks, held by a context manager for exactly one
computation and released when it returns or raises."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from embedstore.cam.layouts import CamLayout
from embedstore.choices import CamMethod, parse

if TYPE_CHECKING:
    import torch

#: Each method's pytorch-grad-cam class (imported when a map is computed).
METHODS: dict[CamMethod, str] = {
    CamMethod.GRADCAM: "GradCAM",
    CamMethod.GRADCAM_PLUS_PLUS: "GradCAMPlusPlus",
    CamMethod.HIRESCAM: "HiResCAM",
    CamMethod.SCORECAM: "ScoreCAM",
    CamMethod.EIGENCAM: "EigenCAM",
}


class HeadTarget:
    """The scorer's output for one label column (a pytorch-grad-cam target)."""

    def __init__(self, column: int) -> None:
        self.column = column

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[self.column]


@contextmanager
def hooked(module: torch.nn.Module, layout: CamLayout, image_size: tuple[int, int],
           method: CamMethod | str = CamMethod.GRADCAM) -> Iterator[Any]:
    """A pytorch-grad-cam object of `method` hooked on `layout`'s layer of `module`; its hooks are
    released on leaving, whatever happened. (Not pytorch-grad-cam's own `with`: its exit swallows
    IndexError.)"""
    import pytorch_grad_cam

    chosen = parse(CamMethod, method, "method")
    cam = getattr(pytorch_grad_cam, METHODS[chosen])(model=module, target_layers=[layout.layer],
                                                     reshape_transform=layout.reshape_transform(image_size))
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def compute_maps(module: torch.nn.Module, layout: CamLayout, images: torch.Tensor, columns: Sequence[int],
                 method: CamMethod | str = CamMethod.GRADCAM) -> np.ndarray:
    """One map per image for its label column (values in [0, 1], the input's height × width); the
    hooks are released when this returns or raises."""
    with hooked(module, layout, (int(images.shape[-2]), int(images.shape[-1])), method) as cam:
        maps = cam(input_tensor=images, targets=[HeadTarget(c) for c in columns])
    return np.asarray(maps, dtype=np.float32)
