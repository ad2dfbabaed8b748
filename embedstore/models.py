"""The model registry: `biomedclip`, `demo`, any `hf-hub:` / `local-dir:` open_clip id, open_clip built-ins.

Models are always loaded offline (nothing is downloaded at run time); a model that is not on this
machine fails with one line saying how to provide it. Every loaded model carries the sha256 of its
weights and a key for its preprocessing, which together identify "the same encoder".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedstore.errors import InputError

log = logging.getLogger(__name__)

BIOMEDCLIP_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
ALIASES: dict[str, str] = {"biomedclip": BIOMEDCLIP_ID}


class ModelUnavailableError(InputError):
    """The model cannot be loaded without a network."""


@dataclass
class LoadedModel:
    """An open_clip model ready to encode, with what identifies it."""

    model_id: str
    open_clip_id: str
    model: Any
    tokenizer: Any
    pixel_transform: Callable[[Any], Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    sha256: str
    preprocess_key: str
    embed_dim: int

    def encode_text(self, prompts: list[str]) -> Any:
        """Raw (unnormalised) text embeddings, one row per prompt."""
        import torch

        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(prompts)).float()


@dataclass(frozen=True)
class ModelEntry:
    """A row of `embedstore models list`."""

    name: str
    open_clip_id: str
    source: str
    available: bool
    builtin: bool = False


def weights_sha256(module: Any) -> str:
    """sha256 over a module's state dict (names and raw bytes, in key order): the weights' identity."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(str(data.dtype).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _split_transform(preprocess: Any) -> tuple[Any, tuple[float, ...], tuple[float, ...], int]:
    """open_clip's Compose(..., Normalize): the pixel part (cached as uint8) and the normalisation."""
    from torchvision import transforms

    steps = list(preprocess.transforms)
    if not isinstance(steps[-1], transforms.Normalize):
        raise InputError("the model's preprocessing does not end in Normalize; embedstore cannot cache it")
    normalize = steps[-1]
    size = next((s.size for s in steps if isinstance(s, transforms.CenterCrop)), None)
    image_size = int(size[0] if isinstance(size, list | tuple) else size) if size else 224
    return transforms.Compose(steps[:-1]), tuple(normalize.mean), tuple(normalize.std), image_size


def _preprocess_key(pixel_transform: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    text = repr(pixel_transform) + repr(mean) + repr(std)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _offline_help(model_id: str, reason: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"--model {model_id}: cannot be loaded offline ({reason}); embedstore never downloads weights. "
        f"Download it once on a machine with internet (python -c \"import open_clip; "
        f"open_clip.create_model_and_transforms('{model_id}')\", which fills the Hugging Face cache), "
        "or save an open_clip_config.json and weights in a folder and pass --model local-dir:/that/folder"
    )


@contextlib.contextmanager
def _offline() -> Any:
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({key: "1" for key in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _create(open_clip_id: str, pretrained: str | None, model_id: str) -> tuple[Any, Any, Any]:
    import open_clip
    import torch

    with _offline():
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)  # a built-in without weights gets the same random weights every time
                model, _, preprocess = open_clip.create_model_and_transforms(open_clip_id, pretrained=pretrained)
            tokenizer = open_clip.get_tokenizer(open_clip_id)
        except (OSError, RuntimeError, ValueError) as error:
            raise _offline_help(model_id, str(error).splitlines()[0][:160]) from None
    return model, preprocess, tokenizer


def _resolve_demo(model_id: str) -> tuple[str, str | None]:
    from embedstore.demo_model import ensure_demo_model

    return f"local-dir:{ensure_demo_model()}", None


def _resolve_demo_fast(model_id: str) -> tuple[str, str | None]:
    from embedstore.demo_model import FAST_CONFIG, ensure_demo_model

    return f"local-dir:{ensure_demo_model(FAST_CONFIG)}", None


def _resolve_local_dir(model_id: str) -> tuple[str, str | None]:
    folder = Path(model_id.removeprefix("local-dir:")).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise ModelUnavailableError(f"--model {model_id}: {folder} has no open_clip_config.json")
    return f"local-dir:{folder.resolve()}", None


def _resolve_hub(model_id: str) -> tuple[str, str | None]:
    return model_id, None


def _resolve_builtin(model_id: str) -> tuple[str, str | None]:
    import open_clip

    name, _, tag = model_id.partition(":")
    if name not in open_clip.list_models():
        raise InputError(
            f"--model {model_id}: unknown; `embedstore models list` shows the registry "
            "(aliases, demo, hf-hub:ORG/REPO, local-dir:PATH, open_clip built-in names)"
        )
    return name, tag or None


#: How each kind of model id is turned into an open_clip id (and pretrained tag).
RESOLVERS: dict[str, Callable[[str], tuple[str, str | None]]] = {
    "demo": _resolve_demo,
    "demo-fast": _resolve_demo_fast,
    "local-dir:": _resolve_local_dir,
    "hf-hub:": _resolve_hub,
}


def _resolver(model_id: str) -> Callable[[str], tuple[str, str | None]]:
    for prefix, resolver in RESOLVERS.items():
        if model_id == prefix or (prefix.endswith(":") and model_id.startswith(prefix)):
            return resolver
    return _resolve_builtin


def load_model(model_id: str) -> LoadedModel:
    """Load a registered model offline, in eval mode on the CPU."""
    resolved = ALIASES.get(model_id, model_id)
    open_clip_id, pretrained = _resolver(resolved)(resolved)
    model, preprocess, tokenizer = _create(open_clip_id, pretrained, resolved)
    model.eval()
    pixel_transform, mean, std, image_size = _split_transform(preprocess)
    with contextlib.suppress(AttributeError):
        size = model.visual.image_size      # (h, w) on ViTs, an int on open_clip's ResNets
        image_size = int(size if isinstance(size, int) else size[0])
    embed_dim = _embed_dim(model, image_size)
    return LoadedModel(
        model_id=model_id, open_clip_id=open_clip_id, model=model, tokenizer=tokenizer,
        pixel_transform=pixel_transform, mean=mean, std=std, image_size=image_size,
        sha256=weights_sha256(model), preprocess_key=_preprocess_key(pixel_transform, mean, std), embed_dim=embed_dim,
    )


def _embed_dim(model: Any, image_size: int) -> int:
    import torch

    with torch.no_grad():
        return int(model.encode_image(torch.zeros(1, 3, image_size, image_size)).shape[-1])


def _hub_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "open_clip_config.json")
    return isinstance(found, str)


def list_models() -> list[ModelEntry]:
    """The registry: aliases, the demo model, and open_clip's built-in architectures."""
    import open_clip

    from embedstore.demo_model import demo_model_dir

    entries = [
        ModelEntry("biomedclip", BIOMEDCLIP_ID, "Hugging Face cache (download once with internet)",
                   _hub_cached(BIOMEDCLIP_ID.removeprefix("hf-hub:"))),
        ModelEntry("demo", "local-dir:" + str(demo_model_dir()),
                   "embedstore's model cache (pretrained on the synthetic source domain on first use)",
                   (demo_model_dir() / "open_clip_config.json").is_file()),
        ModelEntry("hf-hub:ORG/REPO", "hf-hub:ORG/REPO", "Hugging Face cache", True),
        ModelEntry("local-dir:PATH", "local-dir:PATH", "a folder with open_clip_config.json and weights", True),
    ]
    for name in open_clip.list_models():
        entries.append(ModelEntry(name, name, "open_clip built-in architecture", True, builtin=True))
    return entries
