"""Grad-CAM for a stored run: the run's own scorer re-built on its image tower, hook points for
ViTs (timm trunks as in BiomedCLIP, open_clip's own) and CNN towers, faithfulness curves and the
model-randomisation sanity check.

Every run's scorer is a linear head on the image embedding: zs runs the protocol's zero-shot head
built from the run's stored text embeddings (raw dot product under the study protocol, cosine ×
logit scale under multilabel), lp the stored head, ft the stored head on the fine-tuned tower. So
the Grad-CAM target for a label is exactly the score the run stored for it.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.annotations import size_pair
from embedstore.errors import InputError, IntegrityError
from embedstore.heads import Head, row_minmax
from embedstore.integrity import load_arrays, load_tensors
from embedstore.models import LoadedModel, load_model
from embedstore.store import Store, first_row

log = logging.getLogger(__name__)

METHOD_NAMES = ("gradcam", "gradcam++", "hirescam", "scorecam", "eigencam")


# ---------------------------------------------------------------------------------------------
# Where to hook an image tower
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CamLayout:
    """A hook point and how its activations become a spatial map: ViT tokens are reshaped to the
    patch grid (prefix tokens dropped); CNN feature maps are spatial already (`patch_size` None)."""

    layer: Any
    layer_name: str
    prefix_tokens: int
    patch_size: tuple[int, int] | None

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int] | None:
        """Tokens per side for an input of `image_size` (height, width); None for a CNN."""
        if self.patch_size is None:
            return None
        return image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1]

    def reshape_transform(self, image_size: tuple[int, int]) -> Callable[[Any], Any] | None:
        """(batch, tokens, channels) activations → (batch, channels, rows, cols)."""
        grid = self.grid(image_size)
        if grid is None:
            return None
        rows, cols = grid

        def reshape(tokens: Any) -> Any:
            if tokens.ndim != 3 or tokens.shape[1] - self.prefix_tokens != rows * cols:
                raise InputError(f"--layer {self.layer_name}: its output {tuple(tokens.shape)} is not the "
                                 f"{rows}×{cols} patch grid (+{self.prefix_tokens} prefix tokens)")
            patches = tokens[:, self.prefix_tokens:, :]
            return patches.reshape(tokens.shape[0], rows, cols, tokens.shape[2]).permute(0, 3, 1, 2)

        return reshape


@dataclass(frozen=True)
class TowerKind:
    """How one kind of image tower is recognised, hooked by default, and which layers `--select-layer` tries."""

    matches: Callable[[Any], bool]
    auto_layer: Callable[[Any], str]
    candidates: Callable[[Any], list[str]]
    tokens: Callable[[Any], tuple[int, tuple[int, int]] | None]


def _native_patch(visual: Any) -> tuple[int, int]:
    return size_pair(visual.patch_size if hasattr(visual, "patch_size") else visual.conv1.kernel_size)


def _has(visual: Any, path: str) -> bool:
    node = visual
    for part in path.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


#: Tower kinds, tried in order. The timm ViT default is the study's layer; open_clip's attention is
#: nn.MultiheadAttention, whose out_proj is never called as a module, so its default is the output
#: of the third-last residual block instead.
TOWER_KINDS: dict[str, TowerKind] = {
    "timm-vit": TowerKind(
        lambda v: _has(v, "trunk.blocks"),
        lambda v: "trunk.blocks.-3.attn.proj",
        lambda v: [f"trunk.blocks.{i}.attn.proj" for i in range(len(v.trunk.blocks))],
        lambda v: (int(v.trunk.num_prefix_tokens), size_pair(v.trunk.patch_embed.patch_size)),
    ),
    "timm-cnn": TowerKind(
        lambda v: _has(v, "trunk.stages"),
        lambda v: "trunk.stages.-1",
        lambda v: [f"trunk.stages.{i}" for i in range(len(v.trunk.stages))],
        lambda v: None,
    ),
    "open_clip-vit": TowerKind(
        lambda v: _has(v, "transformer.resblocks"),
        lambda v: "transformer.resblocks.-3",
        lambda v: [f"transformer.resblocks.{i}" for i in range(len(v.transformer.resblocks))],
        lambda v: (1, _native_patch(v)),
    ),
    "open_clip-resnet": TowerKind(
        lambda v: _has(v, "layer4"),
        lambda v: "layer4",
        lambda v: ["layer1", "layer2", "layer3", "layer4"],
        lambda v: None,
    ),
}


def resolve_layer(root: Any, spec: str) -> Any:
    """A dotted path below the image tower (`trunk.blocks.-3.attn.proj`); integers index lists."""
    node = root
    for part in spec.split("."):
        try:
            node = node[int(part)] if part.lstrip("-").isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            raise InputError(f"--layer {spec}: the image tower has no {part!r} there") from None
    return node


def tower_kind(visual: Any) -> TowerKind:
    for kind in TOWER_KINDS.values():
        if kind.matches(visual):
            return kind
    raise InputError(f"image tower {type(visual).__name__}: not a tower embedstore knows how to hook "
                     f"(known: {', '.join(TOWER_KINDS)})")


def cam_layout(visual: Any, spec: str = "auto") -> CamLayout:
    """The hook point (`auto`: the tower kind's default) and token layout of an image tower."""
    kind = tower_kind(visual)
    name = kind.auto_layer(visual) if spec == "auto" else spec
    tokens = kind.tokens(visual)
    prefix, patch = tokens if tokens is not None else (0, None)
    return CamLayout(resolve_layer(visual, name), name, prefix, patch)


def candidate_layers(visual: Any) -> list[str]:
    """The layers `--select-layer` compares, bottom to top."""
    return tower_kind(visual).candidates(visual)


# ---------------------------------------------------------------------------------------------
# The run's scorer on its image tower
# ---------------------------------------------------------------------------------------------

class HeadTarget:
    """The head's logit for one label (pytorch-grad-cam target)."""

    def __init__(self, column: int) -> None:
        self.column = column

    def __call__(self, logits: Any) -> Any:
        return logits[self.column]


def head_model(visual: Any, head: Head) -> Any:
    """The image tower followed by a linear head: its outputs are the run's scores."""
    import torch

    class WithHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual
            self.head = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
            with torch.no_grad():
                self.head.weight.copy_(torch.from_numpy(np.asarray(head.weight, dtype=np.float32)))
                self.head.bias.copy_(torch.from_numpy(np.asarray(head.bias, dtype=np.float32)))

        def forward(self, x: Any) -> Any:
            features = self.visual(x)
            if head.normalize_input:
                features = torch.nn.functional.normalize(features, dim=-1)
            return self.head(features)

    return WithHead().eval()


@dataclass
class CamSubject:
    """A stored run made runnable again: its model, its scorer as a module, its labels."""

    run_id: str
    mode: str
    protocol: str
    prompt_set: str | None
    dataset_id: str
    labels: list[str]
    loaded: LoadedModel
    module: Any
    config: dict[str, Any]

    @property
    def visual(self) -> Any:
        return self.module.visual

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Scores (n × labels) → the run's probabilities: the sigmoid where a score is a log-odds (lp
        and ft heads, posneg prompts), else the study's per-row min-max scaling (raw dot products,
        cosine × logit scale)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.protocol == "multilabel" and (self.mode != "zs" or self.prompt_set == "posneg"):
            return 1.0 / (1.0 + np.exp(-logits))
        return row_minmax(logits)

    def column(self, label: str) -> int:
        if label not in self.labels:
            raise InputError(f"--labels {label}: run {self.run_id} has no such label (it has {', '.join(self.labels)})")
        return self.labels.index(label)


@dataclass(frozen=True)
class StoredRun:
    """What a run's scorer is rebuilt from."""

    run_id: str
    protocol: str
    prompt_set: str | None
    labels: list[str]
    config: dict[str, Any]


def _zero_shot_head(store: Store, run: StoredRun, visual: Any) -> Head:
    """The protocol's zero-shot head from the run's stored text embeddings."""
    from embedstore.prompts import build_prompts, zero_shot_head

    with store.reader() as con:
        rows = con.execute(queries.load("run_prompts").text, {"run_id": run.run_id}).fetchall()
    stored = {(label, prompt): np.asarray(embedding, dtype=np.float32) for label, prompt, embedding in rows}
    prompts = build_prompts(str(run.prompt_set), run.labels)
    missing = [p.text for p in prompts if (p.label, p.text) not in stored]
    if missing:
        raise IntegrityError(f"run {run.run_id}: text embeddings missing for prompts {missing[:3]}")
    text = np.stack([stored[(p.label, p.text)] for p in prompts])
    return zero_shot_head(run.protocol, prompts, text, run.labels, float(run.config.get("logit_scale", 1.0)))


def _probe_head(store: Store, run: StoredRun, visual: Any) -> Head:
    """The linear probe's stored head (checked against the manifest, never unpickled)."""
    return Head.from_state(load_arrays(store, f"artefacts/{run.run_id}/head.npz"))


def _finetuned_head(store: Store, run: StoredRun, visual: Any) -> Head:
    """The fine-tuned run's head; loads its fine-tuned weights into `visual` (checked, tensors only)."""
    state = load_tensors(store, f"artefacts/{run.run_id}/finetuned.pt")
    visual.load_state_dict(state["visual"])
    return Head.from_state(state["head"])


#: How each mode's scorer is rebuilt on the image tower.
HEAD_LOADERS: dict[str, Callable[[Store, StoredRun, Any], Head]] = {
    "zs": _zero_shot_head,
    "lp": _probe_head,
    "ft": _finetuned_head,
}


def load_subject(store: Store, run_id: str, device: Any) -> CamSubject:
    """Load a complete run's model (checking its weights are the run's), with its head on top."""
    with store.reader() as con:
        row = first_row(con, queries.load("run_overview").text, {"run_id": run_id})
    if row is None or row[9] != "complete":
        raise InputError(f"--run {run_id}: no complete run with that id (`embedstore sql --name runs` lists them)")
    _, mode, protocol, prompt_set, model_id, model_sha, dataset_id, *_ = row
    config = json.loads(row[13])
    run = StoredRun(run_id, protocol, prompt_set, list(config["labels"]), config)
    loaded = load_model(model_id)
    if loaded.sha256 != model_sha:
        raise IntegrityError(f"--run {run_id}: model {model_id} here has weights sha256 {loaded.sha256[:12]}…, "
                             f"the run was made with {model_sha[:12]}…")
    visual = loaded.model.visual
    head = HEAD_LOADERS[mode](store, run, visual)
    module = head_model(visual.float(), head).to(device)
    return CamSubject(run_id, mode, protocol, prompt_set, dataset_id, run.labels, loaded, module, config)


# ---------------------------------------------------------------------------------------------
# Maps, faithfulness, randomisation
# ---------------------------------------------------------------------------------------------

def _methods() -> dict[str, Any]:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "scorecam": ScoreCAM,
            "eigencam": EigenCAM}


def check_method(method: str) -> None:
    if method not in METHOD_NAMES:
        raise InputError(f"--method {method}: choose one of {', '.join(METHOD_NAMES)}")


def compute_maps(module: Any, layout: CamLayout, images: Any, columns: Sequence[int],
                 method: str = "gradcam") -> np.ndarray:
    """One map per image for its label column (values in [0, 1], the input's height × width); the
    hooks are released when this returns or raises."""
    check_method(method)
    reshape = layout.reshape_transform((int(images.shape[-2]), int(images.shape[-1])))
    cam = _methods()[method](model=module, target_layers=[layout.layer], reshape_transform=reshape)
    # Not `with cam:` — pytorch-grad-cam's __exit__ swallows IndexError; release the hooks ourselves.
    try:
        maps = cam(input_tensor=images, targets=[HeadTarget(c) for c in columns])
    finally:
        cam.activations_and_grads.release()
    return np.asarray(maps, dtype=np.float32)


def _pixel_order(cam_map: np.ndarray) -> np.ndarray:
    """Pixels from the most to the least salient (ties in raster order)."""
    return np.argsort(-cam_map.reshape(-1), kind="stable")


def faithfulness(module: Any, image: Any, cam_map: np.ndarray, column: int, probability: Callable[[np.ndarray], np.ndarray],
                 steps: int = 16) -> tuple[float, float]:
    """Deletion and insertion AUC of one map (RISE, Petsiuk et al. 2018): the label's probability as
    the most salient pixels are replaced by the mean pixel (deletion; lower is better) or restored
    onto an all-mean image (insertion; higher is better), in `steps` equal steps of the pixel count.
    `probability` turns the module's logits (n × labels) into the run's probabilities."""
    import torch

    height, width = cam_map.shape
    order = torch.from_numpy(_pixel_order(cam_map))
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


#: Module containers whose items are the tower's blocks (randomised one by one, top-down).
BLOCK_CONTAINERS = ("blocks", "resblocks", "stages")


def randomisation_stages(module: Any, prefix: str = "") -> list[tuple[str, list[Any]]]:
    """The module's parameters grouped into stages from the output down to the input: the head,
    the projection, each block from the last to the first, then the embeddings."""
    stages: list[tuple[str, list[Any]]] = []
    direct = list(module.parameters(recurse=False))
    if direct:
        stages.append((prefix or "(root)", direct))
    for name, child in reversed(list(module.named_children())):
        path = f"{prefix}.{name}" if prefix else name
        params = list(child.parameters())
        if not params:
            continue
        if name in BLOCK_CONTAINERS:
            stages.extend((f"{path}.{i}", list(block.parameters())) for i, block in reversed(list(enumerate(child))))
        elif any(n.split(".")[-1] in BLOCK_CONTAINERS for n, _ in child.named_modules() if n):
            stages.extend(randomisation_stages(child, path))
        else:
            stages.append((path, params))
    return stages


def randomise(parameters: list[Any], generator: Any) -> None:
    """Redraw each tensor from N(0, σ²) with σ its own standard deviation: same scale, no learnt structure."""
    import torch

    with torch.no_grad():
        for tensor in parameters:
            std = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
            noise = torch.randn(tensor.shape, generator=generator) * (std if std > 0 else 0.02)
            tensor.copy_(noise.to(tensor.dtype))


def randomised_copy(module: Any) -> Any:
    """A deep copy to randomise stage by stage; the original stays untouched."""
    return copy.deepcopy(module)
