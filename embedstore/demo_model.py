"""The `demo` model: a tiny open_clip CLIP that embedstore pretrains itself, so the tool runs offline.

It is trained contrastively on image–report pairs of the synthetic *source* domain (balanced
labels, its own exposure and noise) and evaluated on the imbalanced, shifted *target* domain —
the same out-of-distribution situation as BiomedCLIP on IU-Xray. The result is kept in the
user-level model cache (`$EMBEDSTORE_CACHE/models/demo-<config hash>/`) as an open_clip
`local-dir:` folder, shared by all stores and reused until asked to retrain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedstore.atomic import sha256_file
from embedstore.paths import default_cache_path

log = logging.getLogger(__name__)

WEIGHTS_NAME = "open_clip_pytorch_model.bin"
RECORD_NAME = "demo.json"


@dataclass(frozen=True)
class DemoConfig:
    """Architecture and training recipe of the demo model; its hash names the cache folder."""

    seed: int = 42
    n_images: int = 1800
    render_size: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 3
    context_length: int = 40
    embed_dim: int = 128
    epochs: int = 15
    batch_size: int = 32
    lr: float = 5e-4

    def model_cfg(self) -> dict[str, object]:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                           "patch_size": self.patch_size, "head_width": 32},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": 4, "layers": self.text_layers},
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_CONFIG = DemoConfig()
#: `demo-fast`: the same recipe on fewer pairs and epochs (for `embedstore demo --fast` and smoke runs).
FAST_CONFIG = DemoConfig(n_images=600, epochs=6)


def demo_model_dir(config: DemoConfig | None = None, cache: Path | None = None) -> Path:
    config = config or DEFAULT_CONFIG
    return (cache or default_cache_path()) / "models" / f"demo-{config.key()}"


def _cached(folder: Path) -> bool:
    record = folder / RECORD_NAME
    if not record.is_file() or not (folder / WEIGHTS_NAME).is_file():
        return False
    expected = json.loads(record.read_text())["weights_file_sha256"]
    if sha256_file(folder / WEIGHTS_NAME) != expected:
        log.warning("demo model in %s does not match its recorded sha256; retraining", folder)
        return False
    return True


def ensure_demo_model(config: DemoConfig | None = None, cache: Path | None = None, retrain: bool = False,
                      progress: Callable[[int], None] | None = None) -> Path:
    """The demo model's folder, pretraining it first when it is not cached (or `retrain`)."""
    config = config or DEFAULT_CONFIG
    folder = demo_model_dir(config, cache)
    if not retrain and _cached(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    try:
        seconds = _pretrain(config, staging, progress)
        record = {"config": asdict(config), "weights_file_sha256": sha256_file(staging / WEIGHTS_NAME),
                  "train_seconds": round(seconds, 1)}
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("demo model pretrained in %.0f s, cached at %s", seconds, folder)
    return folder


def _training_pairs(config: DemoConfig) -> tuple[list[np.ndarray], list[str]]:
    """Rendered source-domain images and their report's impression (which names the findings)."""
    from embedstore.choices import SampleDomain
    from embedstore.synthetic import SampleConfig, plan_dataset, render_frontal

    sample = SampleConfig(out=Path("."), n=config.n_images, seed=config.seed, domain=SampleDomain.SOURCE,
                          size=config.render_size)
    images, texts = [], []
    for job in plan_dataset(sample):
        if not job.frontal:
            continue
        pixels, _ = render_frontal(config.seed, SampleDomain.SOURCE, job.index, job.study.findings, job.study.sides,
                                   config.render_size)
        images.append(pixels)
        texts.append(job.study.report["impression"])
    return images, texts


def _pretrain(config: DemoConfig, folder: Path, progress: Callable[[int], None] | None) -> float:
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from embedstore.models import open_clip_logs_at_debug

    started = time.perf_counter()
    torch.use_deterministic_algorithms(True, warn_only=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": config.model_cfg(),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }, indent=2))
    torch.manual_seed(config.seed)
    with open_clip_logs_at_debug():  # built from its config on purpose: no weights yet is no news
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    images, texts = _training_pairs(config)
    pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images])
    tokens = tokenizer(texts)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    steps = config.epochs * int(np.ceil(len(images) / config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            image_features = model.encode_image(pixels[batch], normalize=True)
            text_features = model.encode_text(tokens[batch], normalize=True)
            logits = model.logit_scale.exp() * image_features @ text_features.T
            # Reports are often identical (normal studies): pairs with the same text are all positives.
            same = (tokens[batch][:, None, :] == tokens[batch][None, :, :]).all(-1).float()
            target = same / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            total += float(loss.detach()) * len(batch)
        log.info("demo pretraining epoch %d/%d: contrastive loss %.3f", epoch + 1, config.epochs, total / len(images))
        if progress:
            progress(1)
    model.eval()
    torch.use_deterministic_algorithms(False)
    torch.save(model.state_dict(), folder / WEIGHTS_NAME)
    return time.perf_counter() - started
