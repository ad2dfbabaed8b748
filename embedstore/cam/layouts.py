"""Where to hook an image tower: the tower kinds embedstore knows (timm ViT trunks as in
BiomedCLIP, open_clip's own ViT, timm and open_clip CNNs), each kind's default and candidate
layers, dotted-path layer resolution, and how a ViT's tokens are put back on its patch grid.

Only model structure lives here: nothing loads a model or computes a map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedstore.annotations import size_pair
from embedstore.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CamLayout:
    """A hook point and how its activations become a spatial map: ViT tokens are reshaped to the
    patch grid (prefix tokens dropped); CNN feature maps are spatial already (`patch_size` None)."""

    layer: torch.nn.Module
    layer_name: str
    prefix_tokens: int
    patch_size: tuple[int, int] | None

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int] | None:
        """Tokens per side for an input of `image_size` (height, width); None for a CNN."""
        if self.patch_size is None:
            return None
        return image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1]

    def reshape_transform(self, image_size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """(batch, tokens, channels) activations → (batch, channels, rows, cols)."""
        grid = self.grid(image_size)
        if grid is None:
            return None
        rows, cols = grid

        def reshape(tokens: torch.Tensor) -> torch.Tensor:
            if tokens.ndim != 3 or tokens.shape[1] - self.prefix_tokens != rows * cols:
                raise InputError(f"layer {self.layer_name!r}: its output {tuple(tokens.shape)} is not the "
                                 f"{rows}×{cols} patch grid (+{self.prefix_tokens} prefix tokens)", parameter="layer")
            patches = tokens[:, self.prefix_tokens:, :]
            return patches.reshape(tokens.shape[0], rows, cols, tokens.shape[2]).permute(0, 3, 1, 2)

        return reshape


@dataclass(frozen=True)
class TowerKind:
    """How one kind of image tower is recognised, which layer it is hooked at by default, which
    layers a layer selection compares (bottom to top), and its token layout (prefix tokens, patch
    size; None for a CNN)."""

    matches: Callable[[torch.nn.Module], bool]
    auto_layer: Callable[[torch.nn.Module], str]
    candidates: Callable[[torch.nn.Module], list[str]]
    tokens: Callable[[torch.nn.Module], tuple[int, tuple[int, int]] | None]


def _at(root: torch.nn.Module, path: str) -> Any:
    """The attribute at a dotted `path` below `root` (structure known to exist)."""
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _has(root: torch.nn.Module, path: str) -> bool:
    node: Any = root
    for part in path.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def _native_patch(visual: torch.nn.Module) -> tuple[int, int]:
    return size_pair(_at(visual, "patch_size") if hasattr(visual, "patch_size") else _at(visual, "conv1.kernel_size"))


#: Tower kinds, tried in order. The timm ViT default is the study's layer; open_clip's attention is
#: nn.MultiheadAttention, whose out_proj is never called as a module, so its default is the output
#: of the third-last residual block instead.
TOWER_KINDS: dict[str, TowerKind] = {
    "timm-vit": TowerKind(
        lambda v: _has(v, "trunk.blocks"),
        lambda v: "trunk.blocks.-3.attn.proj",
        lambda v: [f"trunk.blocks.{i}.attn.proj" for i in range(len(_at(v, "trunk.blocks")))],
        lambda v: (int(_at(v, "trunk.num_prefix_tokens")), size_pair(_at(v, "trunk.patch_embed.patch_size"))),
    ),
    "timm-cnn": TowerKind(
        lambda v: _has(v, "trunk.stages"),
        lambda v: "trunk.stages.-1",
        lambda v: [f"trunk.stages.{i}" for i in range(len(_at(v, "trunk.stages")))],
        lambda v: None,
    ),
    "open_clip-vit": TowerKind(
        lambda v: _has(v, "transformer.resblocks"),
        lambda v: "transformer.resblocks.-3",
        lambda v: [f"transformer.resblocks.{i}" for i in range(len(_at(v, "transformer.resblocks")))],
        lambda v: (1, _native_patch(v)),
    ),
    "open_clip-resnet": TowerKind(
        lambda v: _has(v, "layer4"),
        lambda v: "layer4",
        lambda v: ["layer1", "layer2", "layer3", "layer4"],
        lambda v: None,
    ),
}

#: Module containers whose items are a tower's blocks (the sanity check redraws them one by one).
BLOCK_CONTAINERS = ("blocks", "resblocks", "stages")


def resolve_layer(root: torch.nn.Module, spec: str) -> torch.nn.Module:
    """A dotted path below the image tower (`trunk.blocks.-3.attn.proj`); integers index lists."""
    node: Any = root
    for part in spec.split("."):
        try:
            node = node[int(part)] if part.lstrip("-").isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            raise InputError(f"layer {spec!r}: the image tower has no {part!r} there", parameter="layer") from None
    return node


def tower_kind(visual: torch.nn.Module) -> TowerKind:
    """The first kind in TOWER_KINDS that recognises `visual`."""
    for kind in TOWER_KINDS.values():
        if kind.matches(visual):
            return kind
    raise InputError(f"image tower {type(visual).__name__}: not a tower embedstore knows how to hook "
                     f"(known: {', '.join(TOWER_KINDS)})")


def cam_layout(visual: torch.nn.Module, spec: str = "auto") -> CamLayout:
    """The hook point (`auto`: the tower kind's default) and token layout of an image tower."""
    kind = tower_kind(visual)
    name = kind.auto_layer(visual) if spec == "auto" else spec
    tokens = kind.tokens(visual)
    prefix, patch = tokens if tokens is not None else (0, None)
    return CamLayout(resolve_layer(visual, name), name, prefix, patch)


def candidate_layers(visual: torch.nn.Module) -> list[str]:
    """The layers a layer selection compares, bottom to top."""
    return tower_kind(visual).candidates(visual)
