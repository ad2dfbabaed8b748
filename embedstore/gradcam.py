"""Grad-CAM core (issue 7, first part): class-activation maps for CLIP image towers, on both ViT
kinds (timm trunks as in BiomedCLIP, open_clip's own), with the token grid taken from the model.

Targets: zero-shot runs score an image by its similarity to a label's text embedding (the raw dot
product under the study protocol, cosine under multilabel); lp/ft runs by the head's logit for the
label. Hooks are registered by pytorch-grad-cam and always released, errors included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.errors import InputError


@dataclass(frozen=True)
class VitLayout:
    """Where to hook a ViT image tower and how its tokens map back to a patch grid."""

    layer: Any
    layer_name: str
    prefix_tokens: int
    patch_size: tuple[int, int]

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Tokens per side for an input of `image_size` (height, width)."""
        return image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1]

    def reshape_transform(self, image_size: tuple[int, int]) -> Callable[[Any], Any]:
        """(batch, tokens, channels) activations → (batch, channels, rows, cols), prefix tokens dropped."""
        rows, cols = self.grid(image_size)

        def reshape(tokens: Any) -> Any:
            if tokens.shape[1] - self.prefix_tokens != rows * cols:
                raise InputError(f"--layer {self.layer_name}: {tokens.shape[1]} tokens do not form the "
                                 f"{rows}×{cols} patch grid (+{self.prefix_tokens} prefix tokens)")
            patches = tokens[:, self.prefix_tokens:, :]
            return patches.reshape(tokens.shape[0], rows, cols, tokens.shape[2]).permute(0, 3, 1, 2)

        return reshape


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, list | tuple) else (int(value), int(value))


def resolve_layer(root: Any, spec: str) -> Any:
    """A dotted path below the image tower (`trunk.blocks.-3.attn.proj`); integers index lists."""
    node = root
    for part in spec.split("."):
        try:
            node = node[int(part)] if part.lstrip("-").isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            raise InputError(f"--layer {spec}: the image tower has no {part!r} there") from None
    return node


def _timm_layout(visual: Any, spec: str) -> VitLayout:
    name = "trunk.blocks.-3.attn.proj" if spec == "auto" else spec
    return VitLayout(resolve_layer(visual, name), name, int(visual.trunk.num_prefix_tokens),
                     _pair(visual.trunk.patch_embed.patch_size))


def _native_layout(visual: Any, spec: str) -> VitLayout:
    # open_clip's attention is nn.MultiheadAttention, whose out_proj is never called as a module:
    # the auto layer is the output of the third-last residual block instead.
    name = "transformer.resblocks.-3" if spec == "auto" else spec
    return VitLayout(resolve_layer(visual, name), name, 1, _pair(visual.patch_size if hasattr(visual, "patch_size")
                                                                 else visual.conv1.kernel_size))


#: How each kind of image tower is recognised and hooked.
LAYOUTS: dict[str, tuple[Callable[[Any], bool], Callable[[Any, str], VitLayout]]] = {
    "timm-vit": (lambda v: hasattr(v, "trunk") and hasattr(v.trunk, "blocks"), _timm_layout),
    "open_clip-vit": (lambda v: hasattr(v, "transformer") and hasattr(v.transformer, "resblocks"), _native_layout),
}


def vit_layout(visual: Any, spec: str = "auto") -> VitLayout:
    """The hook point and token layout of an image tower."""
    for _, (matches, build) in LAYOUTS.items():
        if matches(visual):
            return build(visual, spec)
    raise InputError(f"image tower {type(visual).__name__}: not a ViT embedstore knows how to hook "
                     f"(known: {', '.join(LAYOUTS)})")


class SimilarityTarget:
    """Zero-shot target: the image embedding's dot product (study) or cosine (multilabel) with a text embedding."""

    def __init__(self, text: np.ndarray, cosine: bool) -> None:
        import torch

        self.text = torch.as_tensor(np.asarray(text, dtype=np.float32))
        self.cosine = cosine

    def __call__(self, embedding: Any) -> Any:
        text = self.text.to(embedding.device)
        if self.cosine:
            return (embedding / embedding.norm()) @ (text / text.norm())
        return embedding @ text


class HeadTarget:
    """lp/ft target: the head's logit for one label."""

    def __init__(self, column: int) -> None:
        self.column = column

    def __call__(self, logits: Any) -> Any:
        return logits[self.column]


def head_model(visual: Any, weight: np.ndarray, bias: np.ndarray, normalize_input: bool) -> Any:
    """The image tower followed by a stored linear head (logits)."""
    import torch

    class WithHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual
            self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                self.head.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
                self.head.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))

        def forward(self, x: Any) -> Any:
            features = self.visual(x)
            if normalize_input:
                features = torch.nn.functional.normalize(features, dim=-1)
            return self.head(features)

    return WithHead().eval()


def _methods() -> dict[str, Any]:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "scorecam": ScoreCAM,
            "eigencam": EigenCAM}


METHOD_NAMES = ("gradcam", "gradcam++", "hirescam", "scorecam", "eigencam")


def compute_maps(model: Any, layout: VitLayout, images: Any, targets: list[Any], method: str = "gradcam") -> np.ndarray:
    """One map per image (values in [0, 1], the input's height × width) for its target; hooks are
    released when this returns or raises."""
    if method not in METHOD_NAMES:
        raise InputError(f"--method {method}: choose one of {', '.join(METHOD_NAMES)}")
    reshape = layout.reshape_transform((int(images.shape[-2]), int(images.shape[-1])))
    cam = _methods()[method](model=model, target_layers=[layout.layer], reshape_transform=reshape)
    # Not `with cam:` — pytorch-grad-cam's __exit__ swallows IndexError; release the hooks ourselves.
    try:
        maps = cam(input_tensor=images, targets=targets)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(maps, dtype=np.float32)
