"""GPU benchmark against the performance budgets in docs/benchmarks.md: ViT-B/16 encoding,
fine-tuning and lp on one CUDA device, each against a
faithful re-implementation of the study's own loop run in the same process on the same model.

Sections (each timed with torch.cuda.synchronize, after warm-up; one failing section does not stop
the others):
  env         device, torch / CUDA / cuDNN / open_clip versions, model load time
  study_encode  the study's loop: one image at a time, fp32, `model.encode_image(x.unsqueeze(0))`,
              `.cpu().numpy()` (encode only, and with PNG decode + preprocess per image)
  batched     embedstore's encoding (`embedstore.images.prepare_encoder` / `encode_batch`, the code
              `extract` runs) on uint8 batches in pinned host memory: bf16 autocast + channels-last
              (embedstore) and fp32 (the study protocol), per batch size
  cache       the same from the on-disk tensor cache through embedstore's loader (`TensorCache`,
              `CachedImages`, `batches`: DataLoader worker processes), 3,818 images per pass
  decode      embedstore's PNG decode + preprocess + cache write per image (one core), for the
              cold-cache estimate
  ft          fine-tuning steps of ViT-B/16 + Linear(512, 14) through embedstore's own epoch loop
              (`embedstore.heads`): the study's fp32 batch 24, embedstore's study recipe (fp16 +
              GradScaler) and multilabel recipe (bf16), batch 24 and a larger batch
  lp          embedstore's lp (`fit_study_head`, `fit_logistic_head`) on 2,673 × 512 cached
              embeddings vs the study's lp, which re-encodes every train image in every epoch
  text        zero-shot prompt encoding (as `extract --mode zs` does it, on the CPU)
  estimate    the full three-setting IU-Xray study (zs + lp + ft 10 epochs + analyses), an ESTIMATE
              assembled from the measured parts, against the 2-minute budget and the study's 21 minutes

Images are synthetic seeded uint8 tensors (and synthetic PNGs); the weights are open_clip's
built-in `ViT-B-16` with seeded random weights (nothing is downloaded): the same ViT-B/16 at 224 px
as BiomedCLIP's image tower, so the same cost.

It runs with PYTHONPATH=<repo root> alone (no install): it imports only embedstore modules free of
the store's dependencies (duckdb, faiss, polars) — models, images, heads, prompts, labels.

Usage (CUDA required):  python3 bench/gpu.py --out gpu.json
Check the script on a CPU: .venv/bin/python bench/gpu.py --smoke   (tiny sizes; figures meaningless)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

N_IMAGES = 3818          # IU-Xray frontal images
N_TRAIN, N_VAL = 2673, 573  # the study's split
N_LABELS = 14
STUDY_SECONDS = 21 * 60  # the study's three settings took over 21 minutes
BUDGET_STUDY_SECONDS = 120
BUDGET_CACHE_IMAGES_PER_S = 5000  # the budget for encoding from the tensor cache on one H100
#: Analyses of one 3,818 × 512 run with 1,000-resample intervals, measured on the 2-core development
#: machine (docs/benchmarks.md, the analyses section); analyses need duckdb/polars/faiss, which the
#: GPU machine lacks, so they are not measured here.
ANALYSES_SECONDS_DOCS = {"multilabel": 1.09, "study": 1.54}


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (full run vs --smoke)."""

    pool: int = 4096                  # distinct uint8 images held in pinned host memory
    per_image: int = 300              # study per-image loop, encode only
    per_image_decode: int = 100       # study per-image loop with PNG decode + preprocess
    pngs: int = 16                    # distinct synthetic PNGs
    png_size: int = 1024
    encode_batches: tuple[int, ...] = (128, 256, 512)
    fp32_batches: tuple[int, ...] = (256, 512)
    bf16_images: int = 4096
    fp32_images: int = 2048
    cache_images: int = N_IMAGES
    cache_batches: tuple[int, ...] = (128, 512)
    decode_images: int = 48
    ft_batch: int = 24
    ft_large_batch: int = 128
    ft_images: int = 960
    ft_large_images: int = 1536
    val_images: int = 480
    study_lp_batches: int = 10        # with PNG decode
    study_lp_encode_images: int = N_TRAIN  # one full epoch, already decoded
    lp_train: int = N_TRAIN           # cached embeddings for embedstore's lp
    lp_val: int = N_VAL
    warmup: int = 2
    max_measure_seconds: float = 15.0


SMOKE = Sizes(pool=8, per_image=3, per_image_decode=2, pngs=2, png_size=256, encode_batches=(4,), fp32_batches=(4,),
              bf16_images=8, fp32_images=8, cache_images=12, cache_batches=(4,), decode_images=2, ft_batch=2,
              ft_large_batch=4, ft_images=4, ft_large_images=4, val_images=4, study_lp_batches=1,
              study_lp_encode_images=4, lp_train=200, lp_val=50, warmup=1, max_measure_seconds=10.0)


@dataclass
class Bench:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    report: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    model: Any = None
    pool: Any = None
    pngs: list[bytes] = field(default_factory=list)
    peak_bytes: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def row(self, section: str, figure: str, value: Any, note: str = "") -> None:
        text = value if isinstance(value, str) else _fmt(value)
        if text == "FAILED":
            self.failures.append(f"{section}: {figure}")
        self.rows.append((section, figure, text, note))
        print(f"  {figure}: {text}{'  (' + note + ')' if note else ''}", flush=True)

    def figure(self, section: str, key: str) -> Any:
        return self.report.get("sections", {}).get(section, {}).get(key)

    def save(self) -> None:
        if self.args.out is None:
            return
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {**self.report, "table": [dict(zip(("section", "figure", "value", "note"), r, strict=True))
                                            for r in self.rows]}
        tmp = self.args.out.with_name(self.args.out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, self.args.out)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------

def measure(bench: Bench, step: Callable[[int], int], images: int, per_step: int, warmup: int | None = None,
            max_seconds: float | None = None) -> dict[str, Any]:
    """Run `step(k)` (which returns the images it processed) after `warmup` calls, until `images`
    images are done or `max_seconds` pass; synchronised before and after. Returns images/s."""
    warmup = bench.sizes.warmup if warmup is None else warmup
    max_seconds = bench.sizes.max_measure_seconds if max_seconds is None else max_seconds
    for k in range(warmup):
        step(k)
    bench.sync()
    steps = max(1, math.ceil(images / per_step))
    done = 0
    started = time.perf_counter()
    for k in range(steps):
        done += step(warmup + k)
        if time.perf_counter() - started > max_seconds:
            break
    bench.sync()
    seconds = time.perf_counter() - started
    return {"images": done, "seconds": round(seconds, 4), "images_per_s": done / seconds,
            "capped": done < images}


def pool_batch(bench: Bench, k: int, batch: int) -> Any:
    """The k-th uint8 batch of `batch` images, cycling over the pinned pool."""
    size = bench.pool.shape[0]
    if batch >= size:
        return bench.pool.repeat(math.ceil(batch / size), 1, 1, 1)[:batch]
    start = (k * batch) % (size - batch + 1)
    return bench.pool[start:start + batch]


def guarded(bench: Bench, section: str, label: str, function: Callable[[], Any]) -> Any:
    """Run one measurement of a section; a failure is printed and recorded, and the section goes on."""
    try:
        return function()
    except Exception as error:
        traceback.print_exc()
        bench.row(section, label, "FAILED", f"{type(error).__name__}: {str(error)[:160]}")
        if bench.cuda:
            torch.cuda.empty_cache()
        return {"error": f"{type(error).__name__}: {error}"}


def default_workers() -> int:
    """`embedstore extract`'s default decoding processes (embedstore.extract.default_workers, which
    cannot be imported without the store's dependencies): all cores but one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def environment(bench: Bench) -> dict[str, Any]:
    from importlib import metadata

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(bench.device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "smoke": bench.args.smoke, "model": bench.args.model, "seed": bench.args.seed,
        "sizes": asdict(bench.sizes),
    }
    for package in ("open_clip_torch", "numpy", "torchvision", "timm", "pillow"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    if bench.cuda:
        props = torch.cuda.get_device_properties(bench.device)
        env |= {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        env["device_name"] = f"cpu ({platform.processor() or platform.machine()})"
    return env


def load(bench: Bench) -> dict[str, Any]:
    """Load the model as `extract` does (embedstore.models.load_model: offline, seeded random
    weights for a built-in, weights sha256), and make the synthetic images."""
    from embedstore.models import load_model

    started = time.perf_counter()
    bench.model = load_model(bench.args.model)
    seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in bench.model.model.visual.parameters())
    size = bench.model.image_size
    shape = (bench.sizes.pool, 3, size, size)
    generator = torch.Generator(device=bench.device).manual_seed(bench.args.seed)
    pool = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator, device=bench.device)
    bench.pool = torch.empty(shape, dtype=torch.uint8, pin_memory=bench.cuda).copy_(pool)  # pinned, as the loader's
    del pool
    bench.pngs = synthetic_pngs(bench.sizes.pngs, bench.sizes.png_size, bench.args.seed)
    bench.row("env", "model load (load_model, CPU, incl. weights sha256)", seconds, "s")
    return {"load_model_seconds": seconds, "image_size": size, "embed_dim": bench.model.embed_dim,
            "visual_parameters": n_params, "png_size": bench.sizes.png_size,
            "png_kib_mean": sum(len(p) for p in bench.pngs) / len(bench.pngs) / 1024}


def synthetic_pngs(count: int, size: int, seed: int) -> list[bytes]:
    """Grayscale PNGs that compress like radiographs (smooth structure, mild noise), not like noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).resize((size, size),
                                                                                         Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-3, 4, (size, size))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def smoke_model(folder: Path, seed: int) -> str:
    """A tiny open_clip ViT CLIP (48 px, 3 blocks) as a `local-dir:` model, seeded random weights,
    so that --smoke exercises the same loading and encoding code in seconds on a CPU."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 32,
                      "vision_cfg": {"image_size": 48, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
                      "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    logging.disable(logging.WARNING)   # open_clip warns that the folder has no weights yet: they are made here
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = open_clip.create_model(f"local-dir:{folder}", pretrained_hf=False)
    finally:
        logging.disable(logging.NOTSET)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


def study_preprocess(model: Any) -> Any:
    """open_clip's own preprocess (pixel steps + Normalize), as the notebook applies it per image."""
    from torchvision import transforms

    return transforms.Compose([*model.pixel_transform.transforms, transforms.Normalize(model.mean, model.std)])


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def study_encode(bench: Bench) -> dict[str, Any]:
    """The study's zs loop: per image, fp32, encode_image(x.unsqueeze(0)), to numpy."""
    from PIL import Image

    model, sizes = bench.model, bench.sizes
    clip = model.model
    clip.visual.to(bench.device).eval()
    mean = torch.tensor(model.mean).view(3, 1, 1)
    std = torch.tensor(model.std).view(3, 1, 1)
    tensors = [(bench.pool[i].float() / 255 - mean) / std for i in range(min(64, bench.pool.shape[0]))]

    def encode_only(k: int) -> int:
        with torch.no_grad():
            clip.encode_image(tensors[k % len(tensors)].unsqueeze(0).to(bench.device)).cpu().numpy()
        return 1

    preprocess = study_preprocess(model)

    def with_decode(k: int) -> int:
        image = Image.open(io.BytesIO(bench.pngs[k % len(bench.pngs)]))
        with torch.no_grad():
            clip.encode_image(preprocess(image).unsqueeze(0).to(bench.device)).cpu().numpy()
        return 1

    only = measure(bench, encode_only, sizes.per_image, 1, warmup=max(3, sizes.warmup))
    decode = measure(bench, with_decode, sizes.per_image_decode, 1)
    bench.row("study", "per-image fp32 encode (tensors ready)", only["images_per_s"], f"img/s, {only['images']} images")
    bench.row("study", "per-image fp32 with PNG decode + preprocess", decode["images_per_s"],
              f"img/s, {decode['images']} images, {sizes.png_size}px PNG")
    return {"encode_only": only, "with_decode": decode}


def batched(bench: Bench) -> dict[str, Any]:
    """embedstore's encode_batch on pinned uint8 batches: bf16 (embedstore) and fp32 (study protocol)."""
    from embedstore.images import encode_autocast, encode_batch, prepare_encoder

    model, sizes = bench.model, bench.sizes
    visual = prepare_encoder(model.model.visual, bench.device)
    study_rate = (bench.figure("study_encode", "encode_only") or {}).get("images_per_s")
    out: dict[str, Any] = {}

    def run(label: str, batch: int, dtype: Any, images: int) -> None:
        def step(k: int) -> int:
            encode_batch(visual, pool_batch(bench, k, batch), model.mean, model.std, bench.device, dtype).cpu().numpy()
            return batch

        result = guarded(bench, "batched", f"{label}, batch {batch}", lambda: measure(bench, step, images, batch))
        if "error" in result:
            out[f"{label}_bs{batch}"] = result
            return
        if study_rate:
            result["ratio_vs_study_per_image"] = result["images_per_s"] / study_rate
        out[f"{label}_bs{batch}"] = result
        ratio = f", {result['ratio_vs_study_per_image']:.1f}× the study's per-image loop" if study_rate else ""
        bench.row("batched", f"{label}, batch {batch}", result["images_per_s"], f"img/s{ratio}")

    embedstore_dtype = encode_autocast(bench.device)
    name = "embedstore bf16 + channels-last" if embedstore_dtype is not None else "embedstore (CPU: fp32)"
    for batch in sizes.encode_batches:
        run(name, batch, embedstore_dtype, sizes.bf16_images)
    for batch in sizes.fp32_batches:
        run("study protocol fp32, batched", batch, None, sizes.fp32_images)
    if bench.cuda:
        def with_tf32() -> dict[str, Any]:
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True   # PyTorch's default is off for matmuls
            try:
                run("fp32 with TF32 matmuls", sizes.fp32_batches[0], None, sizes.fp32_images)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
            return {}

        guarded(bench, "batched", "fp32 with TF32 matmuls", with_tf32)
    return out


def cache(bench: Bench) -> dict[str, Any]:
    """Encoding from the on-disk tensor cache through embedstore's loader, as `extract` reads it."""
    from embedstore.images import (
        CachedImages,
        ImageItem,
        TensorCache,
        batches,
        encode_autocast,
        encode_batch,
        prepare_encoder,
    )

    model, sizes = bench.model, bench.sizes
    root = Path(tempfile.mkdtemp(prefix="embedstore-gpu-bench-"))
    out: dict[str, Any] = {"folder": str(root)}
    try:
        store = TensorCache(root, model.preprocess_key)
        items = []
        started = time.perf_counter()
        for i in range(sizes.cache_images):
            sha = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
            store.put(sha, bench.pool[i % bench.pool.shape[0]].numpy())
            items.append(ImageItem(i, f"/nonexistent/bench-{i}.png", sha))  # never decoded: every tensor is cached
            if time.perf_counter() - started > 2 * sizes.max_measure_seconds:
                break
        out["write_seconds"], out["images"] = time.perf_counter() - started, len(items)
        bench.row("cache", "tensor cache written", f"{len(items):,} images", f"{out['write_seconds']:.1f} s")
        dataset = CachedImages(items, store, model.pixel_transform)
        visual = prepare_encoder(model.model.visual, bench.device)
        workers = default_workers()

        def one_pass(batch: int, n_workers: int, dtype: Any) -> dict[str, Any]:
            bench.sync()
            started = time.perf_counter()
            first = None
            done = 0
            for _, images in batches(dataset, batch, n_workers):
                if first is None:
                    first = time.perf_counter() - started
                encode_batch(visual, images, model.mean, model.std, bench.device, dtype).cpu().numpy()
                done += len(images)
            bench.sync()
            seconds = time.perf_counter() - started
            return {"images": done, "seconds": seconds, "images_per_s": done / seconds,
                    "first_batch_seconds": first, "batch": batch, "workers": n_workers}

        dtype = encode_autocast(bench.device)
        label = "bf16" if dtype is not None else "fp32 (CPU)"
        first = sizes.cache_batches[0]   # `extract --encode-batch-size` default (128)
        passes = [("warm-up pass (not counted)", first, workers, dtype, "warm-up")]
        passes += [(f"{label}, batch {b}, {workers} workers", b, workers, dtype,
                    "extract_default" if b == first else "") for b in sizes.cache_batches]
        passes += [(f"{label}, batch {first}, no workers", first, 0, dtype, "no_workers"),
                   (f"study protocol fp32, batch {first}, {workers} workers", first, workers, None, "study_fp32")]
        for key, batch, n_workers, pass_dtype, role in passes:
            try:
                result = one_pass(batch, n_workers, pass_dtype)
            except Exception as error:  # a loader failure (e.g. small /dev/shm) must not hide the other passes
                out[key] = {"error": f"{type(error).__name__}: {error}"}
                bench.row("cache", key, "FAILED", f"{type(error).__name__}: {str(error)[:120]}")
                continue
            out[key] = result
            if role == "warm-up":
                continue
            note = (f"img/s; {result['images']:,} images in {result['seconds']:.2f} s, "
                    f"first batch after {result['first_batch_seconds']:.2f} s")
            study_rate = (bench.figure("study_encode", "encode_only") or {}).get("images_per_s")
            if study_rate:
                result["ratio_vs_study_per_image"] = result["images_per_s"] / study_rate
                note += f", {result['ratio_vs_study_per_image']:.1f}× the study's per-image loop"
            if role:
                out[role] = result
            if role == "extract_default":
                verdict = "met" if result["images_per_s"] >= BUDGET_CACHE_IMAGES_PER_S else "NOT met"
                note += f"; budget ≥ {BUDGET_CACHE_IMAGES_PER_S:,} on an H100: {verdict}"
            bench.row("cache", key, result["images_per_s"], note)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def decode(bench: Bench) -> dict[str, Any]:
    """embedstore's cold-cache work per image (decode PNG, pixel transform, cache write), one process."""
    from embedstore.images import ImageItem, TensorCache
    from embedstore.images import decode as decode_image

    model, sizes = bench.model, bench.sizes
    root = Path(tempfile.mkdtemp(prefix="embedstore-gpu-bench-png-"))
    try:
        paths = []
        for i, data in enumerate(bench.pngs):
            path = root / f"{i}.png"
            path.write_bytes(data)
            paths.append(path)
        store = TensorCache(root / "cache", model.preprocess_key)

        def step(k: int) -> int:
            item = ImageItem(k, str(paths[k % len(paths)]), f"{k:064x}")
            store.put(item.sha256, decode_image(item, model.pixel_transform))
            return 1

        result = measure(bench, step, sizes.decode_images, 1, warmup=1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    workers = default_workers()
    result["seconds_per_image"] = 1 / result["images_per_s"]
    result["estimated_cold_pass_seconds"] = N_IMAGES * result["seconds_per_image"] / workers
    bench.row("decode", f"decode + preprocess + cache write, one process ({sizes.png_size}px PNG)",
              result["images_per_s"], "img/s")
    bench.row("decode", f"ESTIMATE: cold-cache decode of {N_IMAGES:,} images on {workers} workers",
              result["estimated_cold_pass_seconds"], "s, assumes linear scaling over workers")
    return result


def ft(bench: Bench) -> dict[str, Any]:
    """Fine-tuning steps through embedstore's epoch loop (heads._train_epoch / _val_loss)."""
    from embedstore.heads import FineTuneData, _train_epoch, _val_loss, _xavier_head
    from embedstore.images import normalize

    model, sizes = bench.model, bench.sizes
    visual = model.model.visual.to(bench.device).to(memory_format=torch.contiguous_format)  # as a fresh ft run
    generator = torch.Generator().manual_seed(bench.args.seed)
    targets = (torch.rand((max(sizes.ft_large_batch, sizes.ft_batch) * 4, N_LABELS), generator=generator) < 0.08)
    targets = targets.float().to(bench.device)
    out: dict[str, Any] = {}

    def data(batch: int, steps: int, dtype: Any) -> FineTuneData:
        def generate(count: int) -> Iterator[tuple[Any, Any]]:
            for k in range(count):
                rows = targets[(k * batch) % (len(targets) - batch + 1):][:batch]
                yield normalize(pool_batch(bench, k, batch), model.mean, model.std, bench.device), rows

        return FineTuneData(train_batches=lambda epoch: generate(steps), val_batches=lambda: generate(steps),
                            device=bench.device, autocast_dtype=dtype, batches_per_epoch=steps)

    variants = [
        ("study's own ft: fp32", "study_fp32", sizes.ft_batch, None, False, sizes.ft_images),
        ("embedstore study recipe: fp16 + GradScaler", "study_recipe", sizes.ft_batch, torch.float16, True,
         sizes.ft_images),
        ("embedstore multilabel recipe: bf16", "multilabel", sizes.ft_batch, torch.bfloat16, False, sizes.ft_images),
        ("embedstore multilabel recipe: bf16", "multilabel_large", sizes.ft_large_batch, torch.bfloat16, False,
         sizes.ft_large_images),
    ]
    def variant(batch: int, dtype: Any, scaled: bool, images: int) -> dict[str, Any]:
        torch.manual_seed(bench.args.seed)
        head = _xavier_head(model.embed_dim, N_LABELS).to(bench.device)
        optimizer = torch.optim.AdamW([*visual.parameters(), *head.parameters()], lr=1e-5, weight_decay=1e-2)
        scaler = torch.amp.GradScaler("cuda") if scaled and bench.cuda else None
        try:
            warm = data(batch, sizes.warmup, dtype)
            _train_epoch(visual, head, optimizer, warm, 0, scaler=scaler)
            _val_loss(visual, head, warm, fp32=scaled, batch_means=scaled)  # the study recipe validates in fp32
            steps = max(1, images // batch)
            bench.sync()
            started = time.perf_counter()
            _train_epoch(visual, head, optimizer, data(batch, steps, dtype), 0, scaler=scaler)
            bench.sync()
            train = steps * batch / (time.perf_counter() - started)
            val_steps = max(1, sizes.val_images // batch)
            started = time.perf_counter()
            _val_loss(visual, head, data(batch, val_steps, dtype), fp32=scaled, batch_means=scaled)
            bench.sync()
            val = val_steps * batch / (time.perf_counter() - started)
        finally:
            del optimizer, scaler, head
            if bench.cuda:
                torch.cuda.empty_cache()
        return {"batch": batch, "train_images_per_s": train, "val_images_per_s": val,
                "epoch_seconds": N_TRAIN / train + N_VAL / val, "dtype": str(dtype),
                "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(bench.device) / 2**30 if bench.cuda else None}

    for label, key, batch, dtype, scaled, images in variants:
        dtype = dtype if bench.cuda else None
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats(bench.device)
        result = guarded(bench, "ft", f"{label}, batch {batch}", partial(variant, batch, dtype, scaled, images))
        if bench.cuda:
            bench.peak_bytes = max(bench.peak_bytes, torch.cuda.max_memory_allocated(bench.device))
        out[key] = result
        if "error" in result:
            continue
        bench.row("ft", f"{label}, batch {batch}: train", result["train_images_per_s"], "img/s")
        bench.row("ft", f"{label}, batch {batch}: one epoch ({N_TRAIN:,} train + {N_VAL} val)",
                  result["epoch_seconds"], "s, images already on the GPU")
    visual.eval()
    return out


def lp(bench: Bench) -> dict[str, Any]:
    """embedstore's lp on cached embeddings vs the study's lp re-encoding every epoch."""
    from embedstore.heads import fit_logistic_head, fit_study_head

    n_train, n_val = bench.sizes.lp_train, bench.sizes.lp_val
    rng = np.random.default_rng(bench.args.seed)
    features = rng.normal(size=(n_train + n_val, 512)).astype(np.float32)
    labels = (rng.random((n_train + n_val, N_LABELS)) < 0.08).astype(np.float32)
    tx, vx, ty, vy = features[:n_train], features[n_train:], labels[:n_train], labels[n_train:]
    study_recipe = fit_study_head(tx, ty, vx, vy, 10, 24, bench.args.seed)
    logistic = fit_logistic_head(tx, ty, vx, vy)
    out: dict[str, Any] = {"embedstore_study_recipe_seconds": study_recipe.seconds,
                           "embedstore_study_recipe_epochs": study_recipe.epochs_run,
                           "embedstore_logistic_seconds": logistic.seconds}
    bench.row("lp", f"embedstore lp, study recipe, {n_train:,} × 512 cached (CPU)", study_recipe.seconds,
              f"s, {study_recipe.epochs_run} epochs")
    bench.row("lp", f"embedstore lp, multilabel recipe (L-BFGS), {n_train:,} × 512 cached (CPU)", logistic.seconds, "s")
    if bench.model is None:
        return out
    out |= guarded(bench, "lp", "study lp", lambda: study_lp(bench))
    for key, name in (("study_lp_10_epochs_seconds", "encode only"),
                      ("study_lp_10_epochs_with_decode_seconds", "with PNG decode")):
        if out.get(key):
            out[f"ratio_{key}_vs_study_recipe"] = out[key] / study_recipe.seconds
            bench.row("lp", f"ratio: study lp ({name}) ÷ embedstore lp (study recipe)",
                      f"{out[key] / study_recipe.seconds:,.0f}×")
    return out


def study_lp(bench: Bench) -> dict[str, Any]:
    """The study's lp epoch: every batch of 24 train images goes through the frozen fp32 encoder again
    before the head's step (decode included, or tensors already decoded: a lower bound)."""
    import torch.nn.functional as F
    from PIL import Image

    from embedstore.images import normalize

    model, sizes = bench.model, bench.sizes
    clip = model.model
    clip.visual.to(bench.device).to(memory_format=torch.contiguous_format).eval()  # as the notebook's model
    torch.manual_seed(bench.args.seed)
    head = torch.nn.Linear(model.embed_dim, N_LABELS).to(bench.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=1e-2)
    preprocess = study_preprocess(model)
    batch = 24
    targets = (torch.rand((batch, N_LABELS), generator=torch.Generator().manual_seed(1)) < 0.08).float()
    targets = targets.to(bench.device)

    def head_step(features: Any) -> None:
        loss = F.binary_cross_entropy_with_logits(head(features), targets[:len(features)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def decoded_step(k: int) -> int:
        images = torch.stack([preprocess(Image.open(io.BytesIO(bench.pngs[(k * batch + i) % len(bench.pngs)])))
                              for i in range(batch)]).to(bench.device)
        with torch.no_grad():
            features = clip.encode_image(images)
        head_step(features)
        return batch

    def tensor_step(k: int) -> int:
        x = normalize(pool_batch(bench, k, batch), model.mean, model.std, bench.device)
        with torch.no_grad():
            features = clip.encode_image(x)
        head_step(features)
        return batch

    batches_per_epoch = math.ceil(N_TRAIN / batch)
    with_decode = measure(bench, decoded_step, sizes.study_lp_batches * batch, batch, warmup=1)
    encode_only = measure(bench, tensor_step, sizes.study_lp_encode_images, batch)
    epoch_decode = batches_per_epoch * batch / with_decode["images_per_s"]
    epoch_encode = batches_per_epoch * batch / encode_only["images_per_s"]
    bench.row("lp", "study lp, one epoch re-encoding (fp32, batch 24, tensors ready)", epoch_encode,
              f"s ({encode_only['images_per_s']:,.0f} img/s; train pass only)")
    bench.row("lp", "study lp, one epoch re-encoding with PNG decode + preprocess", epoch_decode,
              f"s ({with_decode['images_per_s']:,.0f} img/s over {with_decode['images']} images)")
    bench.row("lp", "study lp, 10 epochs (tensors ready / with decode)",
              f"{10 * epoch_encode:,.1f} / {10 * epoch_decode:,.1f}", "s, extrapolated from the above")
    return {"study_lp_encode_only": encode_only, "study_lp_with_decode": with_decode,
            "study_lp_epoch_seconds": epoch_encode, "study_lp_epoch_with_decode_seconds": epoch_decode,
            "study_lp_10_epochs_seconds": 10 * epoch_encode, "study_lp_10_epochs_with_decode_seconds": 10 * epoch_decode}


def text(bench: Bench) -> dict[str, Any]:
    """zs prompt encoding as run_zero_shot does it (LoadedModel.encode_text, on the CPU)."""
    from embedstore.labels import CHEXPERT_LABELS
    from embedstore.prompts import DEFAULT_PROMPTS, build_prompts

    out: dict[str, Any] = {}
    for protocol in ("study", "multilabel"):
        prompts = [p.text for p in build_prompts(DEFAULT_PROMPTS[protocol], list(CHEXPERT_LABELS))]
        started = time.perf_counter()
        bench.model.encode_text(prompts)
        out[protocol] = {"prompts": len(prompts), "seconds": time.perf_counter() - started}
        bench.row("text", f"zs prompts, {protocol} ({len(prompts)} prompts, CPU)", out[protocol]["seconds"], "s")
    return out


def estimate(bench: Bench) -> dict[str, Any]:
    """ESTIMATE of the three-setting IU-Xray study, assembled from the measured parts."""
    load_s = bench.figure("setup", "load_model_seconds")
    cache_s = bench.report.get("sections", {}).get("cache", {})
    decode_s = bench.figure("decode", "estimated_cold_pass_seconds")
    ft_s = bench.report.get("sections", {}).get("ft", {})
    lp_s = bench.report.get("sections", {}).get("lp", {})
    text_s = bench.report.get("sections", {}).get("text", {})
    analyses = bench.args.analyses_seconds
    out: dict[str, Any] = {"label": "ESTIMATE from measured parts, not a measured end-to-end run"}

    def encode_pass(key: str) -> float | None:
        """Seconds for one pass over the dataset: the measured rate plus the loader's start-up."""
        result = cache_s.get(key)
        if not result or not result.get("images"):
            return None
        return result["seconds"] * N_IMAGES / result["images"]   # the pass is N_IMAGES unless the write was capped

    encode = encode_pass("extract_default")
    if encode is None and encode_pass("no_workers") is not None:   # the worker pass failed (e.g. /dev/shm)
        encode = encode_pass("no_workers")
        out["encode_from"] = "the pass without loader workers (the default pass failed)"
    startup = (cache_s.get("extract_default") or {}).get("first_batch_seconds") or 0.0
    # The study protocol encodes in fp32 (as its notebook does); multilabel in bf16.
    encodes = {"multilabel": encode, "study": encode_pass("study_fp32")}
    for protocol, ft_key, lp_key in (("multilabel", "multilabel", "embedstore_logistic_seconds"),
                                     ("study", "study_recipe", "embedstore_study_recipe_seconds")):
        ft_epoch = (ft_s.get(ft_key) or {}).get("epoch_seconds")
        encode_s = encodes[protocol]
        parts = {
            "load model, once per run (3)": None if load_s is None else 3 * load_s,
            # a cold cache decodes in the loader's workers while the GPU encodes: only the excess counts
            "zs: cold-cache decode beyond the encode (estimate)":
                None if decode_s is None or encode_s is None else max(0.0, decode_s - encode_s),
            f"zs: encode 3,818 from the tensor cache ({'fp32' if protocol == 'study' else 'bf16'})": encode_s,
            "zs: prompts": (text_s.get(protocol) or {}).get("seconds"),
            "lp: fit on cached embeddings": lp_s.get(lp_key),
            "ft: 10 epochs (+ 2 loader start-ups each)": None if ft_epoch is None else 10 * (ft_epoch + 2 * startup),
            "ft: final encode 3,818": encode_s,
            "analyses, 3 runs (dev-machine figure, not measured here)": 3 * float(analyses[protocol]),
        }
        missing = [name for name, value in parts.items() if value is None]
        total = None if missing else sum(parts.values())
        warm_total = None if total is None else total - parts["zs: cold-cache decode beyond the encode (estimate)"]
        out[protocol] = {"parts": parts, "missing": missing, "total_seconds": total,
                         "total_warm_cache_seconds": warm_total}
        if total is None:
            bench.row("estimate", f"{protocol} protocol", "n/a", f"missing: {', '.join(missing)}")
            continue
        bench.row("estimate", f"ESTIMATE {protocol} protocol, three settings, from nothing", total,
                  f"s; budget {BUDGET_STUDY_SECONDS} s: {'met' if total <= BUDGET_STUDY_SECONDS else 'NOT met'}; "
                  f"the study: {STUDY_SECONDS} s ({STUDY_SECONDS / total:.1f}×)")
        bench.row("estimate", f"ESTIMATE {protocol} protocol, tensor cache already filled", warm_total, "s")
        for name, value in parts.items():
            bench.row("estimate", f"  {protocol}: {name}", value, "s")
    out["not_included"] = "charts and the report (CPU), store commits and FAISS index writes"
    bench.row("estimate", "not included", out["not_included"])
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

SECTIONS: list[tuple[str, Callable[[Bench], dict[str, Any]], bool]] = [
    ("study_encode", study_encode, True),
    ("batched", batched, True),
    ("cache", cache, True),
    ("decode", decode, True),
    ("lp", lp, False),
    ("ft", ft, True),
    ("text", text, True),
    ("estimate", estimate, False),
]


def run_section(bench: Bench, name: str, function: Callable[[Bench], dict[str, Any]]) -> None:
    sections = bench.report.setdefault("sections", {})
    if time.perf_counter() - bench.started > bench.args.max_seconds:
        sections[name] = {"skipped": f"time budget of {bench.args.max_seconds:.0f} s spent"}
        bench.row(name, "skipped", "time budget spent")
        return
    print(f"[{time.perf_counter() - bench.started:6.1f} s] {name}", flush=True)
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats(bench.device)
    started = time.perf_counter()
    try:
        result = function(bench)
    except Exception as error:
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        bench.row(name, "whole section", "FAILED", f"{type(error).__name__}: {str(error)[:160]}")
    result["section_seconds"] = time.perf_counter() - started
    if bench.cuda:
        peak = torch.cuda.max_memory_allocated(bench.device)
        bench.peak_bytes = max(bench.peak_bytes, peak)
        result["peak_gpu_memory_gib"] = peak / 2**30
    sections[name] = result
    bench.save()


def print_table(bench: Bench) -> None:
    env = bench.report["env"]
    print("\n" + "=" * 100)
    print(f"embedstore GPU benchmark — {env.get('device_name')} — torch {env['torch']} (CUDA {env['cuda']}, "
          f"cuDNN {env['cudnn']}), open_clip {env.get('open_clip_torch')}, Python {env['python']}, "
          f"{env['cpu_count']} CPUs{' — SMOKE RUN, figures meaningless' if bench.args.smoke else ''}")
    print(f"model {bench.args.model} (seeded random weights), peak GPU memory "
          f"{_fmt(bench.report.get('peak_gpu_memory_gib'))} GiB, total {bench.report['total_seconds']:.0f} s")
    width = max(len(r[1]) for r in bench.rows) if bench.rows else 10
    section = None
    for name, figure, value, note in bench.rows:
        if name != section:
            print(f"-- {name}")
            section = name
        print(f"   {figure:<{width}}  {value:>12}  {note}")
    print("=" * 100, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write every figure here as JSON (after each section)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed: checks the script runs")
    parser.add_argument("--model", default=None,
                        help="model id for embedstore.models.load_model (default: the built-in ViT-B-16 with seeded "
                             "random weights; with --smoke, a tiny local-dir ViT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="no section starts after this many seconds (default 240)")
    parser.add_argument("--png-size", type=int, default=None, help="side of the synthetic PNGs (default 1024)")
    parser.add_argument("--analyses-seconds", type=json.loads, default=ANALYSES_SECONDS_DOCS,
                        help="JSON {protocol: seconds per run} for the estimate (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(f"bench/gpu.py: error: torch {torch.__version__} sees no CUDA device; this benchmark needs one "
              "(use --smoke for a CPU check of the script)", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else Sizes()
    if args.smoke:
        torch.set_num_threads(1)   # a shared CPU: oversubscribed threads make tiny steps crawl
    if args.png_size:
        sizes = Sizes(**{**asdict(sizes), "png_size": args.png_size})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="embedstore-gpu-bench-model-"))
    try:
        if args.model is None:
            args.model = smoke_model(scratch, args.seed) if args.smoke else "ViT-B-16"
        return run(args, sizes, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, sizes: Sizes, device: torch.device) -> int:
    bench = Bench(args, sizes, device)
    bench.report["env"] = environment(bench)
    bench.save()
    print(f"embedstore GPU benchmark on {bench.report['env']['device_name']}, torch {torch.__version__}", flush=True)
    run_section(bench, "setup", load)
    have_model = bench.model is not None
    for name, function, needs_model in SECTIONS:
        if needs_model and not have_model:
            bench.report["sections"][name] = {"skipped": "the model did not load (see setup)"}
            bench.row(name, "skipped", "the model did not load (see setup)")
            continue
        run_section(bench, name, function)
    bench.report["total_seconds"] = time.perf_counter() - bench.started
    if bench.cuda:
        bench.report["peak_gpu_memory_gib"] = bench.peak_bytes / 2**30
    bench.save()
    print_table(bench)
    if bench.failures:
        print(f"bench/gpu.py: {len(bench.failures)} measurement(s) failed: {'; '.join(bench.failures)} "
              "(tracebacks above; errors in the JSON)", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
