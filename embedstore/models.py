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
import pickle
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import OFFLINE_SWITCHES
from embedstore.errors import InputError

log = logging.getLogger(__name__)

BIOMEDCLIP_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
ALIASES: dict[str, str] = {"biomedclip": BIOMEDCLIP_ID}
#: The context length of a tokenizer that names none (open_clip's, and CLIP's).
DEFAULT_CONTEXT_LENGTH = 77


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

    @property
    def context_length(self) -> int:
        """Tokens the text tower reads, special tokens included (77 for open_clip's own text towers, 256
        for BiomedCLIP's BERT): the tokenizer cuts a longer text to this length."""
        length = getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", None)
        return int(length or DEFAULT_CONTEXT_LENGTH)

    def tokenize_long(self, texts: list[str]) -> tuple[Any, np.ndarray]:
        """Tokens of `texts` cut to the context length, and per text whether it was cut: a text is cut when
        its first `context_length` tokens differ from those it gets with room for one more (the cut
        sequence ends in the end token where the longer one still holds text)."""
        tokens = self.tokenizer(texts)
        roomier = self.tokenizer(texts, context_length=self.context_length + 1)
        cut = (roomier[:, :tokens.shape[1]] != tokens).any(dim=1)
        return tokens, cut.cpu().numpy().astype(bool)

    def encode_tokens(self, tokens: Any, device: Any = None) -> Any:
        """Raw (unnormalised) text embeddings of tokenised texts, on `device` (default: where the model is)."""
        import torch

        with torch.no_grad():
            return self.model.encode_text(tokens if device is None else tokens.to(device)).float()


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
    """What a model sees of an image: the decoder (how files become 8-bit RGB) and the transforms."""
    from embedstore import images

    text = images.DECODER_KEY + repr(pixel_transform) + repr(mean) + repr(std)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _offline_help(model_id: str, reason: str) -> ModelUnavailableError:
    name, _, tag = model_id.partition(":")
    call = (f"'{name}', pretrained='{tag}'" if tag and name not in ("hf-hub", "local-dir") else f"'{model_id}'")
    return ModelUnavailableError(
        f"model {model_id!r}: cannot be loaded offline ({reason}); embedstore never downloads weights. "
        f"Download it once on a machine with internet (python -c \"import open_clip; "
        f"open_clip.create_model_and_transforms({call})\", which fills the Hugging Face cache), "
        "or save an open_clip_config.json and weights in a folder and use the model local-dir:/that/folder",
        parameter="model",
    )


def _unsafe_weights(model_id: str, error: Exception) -> ModelUnavailableError:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    reason = f"it would unpickle {found.group(1)}" if found else "it needs unpickling"
    return ModelUnavailableError(
        f"model {model_id!r}: its weights file is not plain tensors ({reason}); embedstore never unpickles "
        "objects from a file: save the weights with torch.save(model.state_dict(), ...) or as safetensors",
        parameter="model",
    )


class NetworkRefusedError(ConnectionRefusedError):
    """What any connection attempt meets while a model loads."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NetworkRefusedError("embedstore: no network access while loading a model (embedstore works offline)")


def _guarded_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return original(sock, address)

    return connect


#: Module attributes that hold a hub library's offline switch after it was imported (it reads the
#: environment once, at import time: embedstore/__init__.py sets the environment before that).
_IMPORTED_SWITCHES = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode"))
_guard_lock = threading.Lock()
_guard_depth = 0
_guard_saved: list[tuple[Any, str, Any]] = []
_INHERITED = object()


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Load models with no network at all: the hub libraries' offline switches on (also in a session
    that imported them before embedstore), and every internet socket connection or host lookup
    refused — the last line of defence for loader paths that ignore those switches (open_clip's URL
    downloads, torch.hub). Local (AF_UNIX) sockets are untouched. Everything is restored on exit."""
    global _guard_depth
    with _guard_lock:
        if _guard_depth == 0:
            _guard_saved.clear()
            os.environ.update(OFFLINE_SWITCHES)
            for module_name, attribute in _IMPORTED_SWITCHES:
                module = sys.modules.get(module_name)
                if module is not None and hasattr(module, attribute):
                    _guard_saved.append((module, attribute, getattr(module, attribute)))
                    setattr(module, attribute, True)
            for attribute in ("connect", "connect_ex"):       # inherited from _socket.socket: shadowed
                _guard_saved.append((socket.socket, attribute, socket.socket.__dict__.get(attribute, _INHERITED)))
                setattr(socket.socket, attribute, _guarded_connect(getattr(socket.socket, attribute)))
            for attribute in ("create_connection", "getaddrinfo"):
                _guard_saved.append((socket, attribute, getattr(socket, attribute)))
                setattr(socket, attribute, _refuse)
        _guard_depth += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0:
                for owner, attribute, value in reversed(_guard_saved):
                    if value is _INHERITED:
                        delattr(owner, attribute)
                    else:
                        setattr(owner, attribute, value)
                _guard_saved.clear()


@contextlib.contextmanager
def open_clip_logs_at_debug() -> Iterator[None]:
    """open_clip logs through the root logger (`logging.warning(...)`): "No pretrained weights
    loaded … Model initialized randomly" while a model is built from its config on purpose, say.
    Inside this block its lines go to embedstore's log at debug level instead (in the CLI and when
    embedstore is used from Python); embedstore says itself what matters (`load_model`)."""
    marker = f"{os.sep}open_clip{os.sep}"

    def to_debug(record: logging.LogRecord) -> bool:
        if marker not in record.pathname:
            return True
        log.debug("open_clip: %s", record.getMessage())
        return False

    root = logging.getLogger()
    root.addFilter(to_debug)
    try:
        yield
    finally:
        root.removeFilter(to_debug)


def _create(open_clip_id: str, pretrained: str | None, model_id: str) -> tuple[Any, Any, Any]:
    import open_clip
    import torch

    with offline(), open_clip_logs_at_debug():
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)  # a built-in without weights gets the same random weights every time
                # weights_only: a weights file is read as tensors, never unpickled; pretrained_image: a
                # timm trunk never fetches its own ImageNet weights.
                model, _, preprocess = open_clip.create_model_and_transforms(
                    open_clip_id, pretrained=pretrained, weights_only=True, pretrained_image=False)
            tokenizer = open_clip.get_tokenizer(open_clip_id)
        except pickle.UnpicklingError as error:
            raise _unsafe_weights(model_id, error) from None
        except (OSError, RuntimeError, ValueError) as error:
            raise _offline_help(model_id, str(error).splitlines()[0][:160]) from None
    return model, preprocess, tokenizer


def _resolve_demo(model_id: str) -> tuple[str, str | None]:
    from embedstore.demo_model import ensure_demo_model

    return f"local-dir:{ensure_demo_model()}", None


def _resolve_demo_fast(model_id: str) -> tuple[str, str | None]:
    from embedstore.demo_model import FAST_CONFIG, ensure_demo_model

    return f"local-dir:{ensure_demo_model(FAST_CONFIG)}", None


#: Files open_clip takes as a `local-dir:` folder's weights.
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def _resolve_local_dir(model_id: str) -> tuple[str, str | None]:
    folder = Path(model_id.removeprefix("local-dir:")).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise ModelUnavailableError(f"model {model_id!r}: {folder} has no open_clip_config.json", parameter="model")
    if not any(path.suffix in WEIGHT_SUFFIXES for path in folder.iterdir()):
        log.warning("warning: model %s: %s holds no weights file (%s), so its weights are random",
                    model_id, folder, ", ".join(WEIGHT_SUFFIXES))
    return f"local-dir:{folder.resolve()}", None


def _hub_file(model_id: str, repo: str, *names: str) -> str | None:
    """The first of `names` in the local Hugging Face cache of `repo` (looked up on disk only)."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        try:
            found = try_to_load_from_cache(repo, name)
        except ValueError:
            raise InputError(f"model {model_id!r}: {repo!r} is not a Hugging Face repo id (ORG/NAME)",
                             parameter="model") from None
        if isinstance(found, str):
            return found
    return None


def _hub_weights(model_id: str, repo: str, filename: str | None = None) -> str | None:
    """open_clip's weights file of a hub repo in the cache (safetensors first, as open_clip looks)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else filename.rsplit(".", 1)[0] + ".safetensors"
    return _hub_file(model_id, repo, safe, filename)


def _resolve_hub(model_id: str) -> tuple[str, str | None]:
    """An hf-hub id is loaded by open_clip from the cache alone; it must hold both config and weights
    (open_clip would otherwise quietly start from random weights)."""
    repo = model_id.removeprefix("hf-hub:")
    if _hub_file(model_id, repo, "open_clip_config.json") is None:
        raise _offline_help(model_id, "it is not in the Hugging Face cache")
    if _hub_weights(model_id, repo) is None:
        raise _offline_help(model_id, "its weights are not in the Hugging Face cache")
    return model_id, None


def _pretrained_cached(model_id: str, cfg: dict[str, Any]) -> bool:
    """Whether open_clip finds a pretrained tag's weights without downloading (where it looks first)."""
    if "file" in cfg:
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        return _hub_weights(model_id, repo, filename or None) is not None
    return bool(cfg.get("url")) and (Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])).is_file()


def _resolve_builtin(model_id: str) -> tuple[str, str | None]:
    import open_clip

    name, _, tag = model_id.partition(":")
    if name not in open_clip.list_models():
        raise InputError(
            f"model {model_id!r}: unknown; `embedstore models list` shows the registry "
            "(aliases, demo, hf-hub:ORG/REPO, local-dir:PATH, open_clip built-in names)", parameter="model"
        )
    if tag and not Path(tag).is_file():
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise InputError(f"model {model_id!r}: {name} has no pretrained tag {tag!r} (tags: {tags})",
                             parameter="model")
        if not _pretrained_cached(model_id, cfg):
            raise _offline_help(model_id, "its pretrained weights are not in the cache")
    if not tag:
        log.info("model %s: open_clip's architecture with seeded random weights (NAME:TAG loads pretrained ones)",
                 model_id)
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
    """Config and weights both in the local Hugging Face cache (what loading needs)."""
    return _hub_file(repo, repo, "open_clip_config.json") is not None and _hub_weights(repo, repo) is not None


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
