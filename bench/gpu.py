"""GPU benchmark against the performance budgets in docs/benchmarks.md: ViT-B/16 encoding,
fine-tuning, lp, neighbour search and the whole study on one CUDA device, each against a
faithful re-implementation of the study's own loop run in the same process on the same model.

Sections, in the order they run (each timed with torch.cuda.synchronize, after warm-up; one failing
section does not stop the others, and no section starts after --max-seconds):
  env         device, torch / CUDA / cuDNN / open_clip versions, model load time
  setup       loads the built-in ViT-B-16 and builds + loads a full-size BiomedCLIP-shaped model
              (timm `vit_base_patch16_224` trunk, 512-d embedding, BERT-base text tower from a
              BertConfig, WordPiece tokenizer.json; a `local-dir:` folder, seeded random weights)
  biomedclip  (a) images/s of the BiomedCLIP-shaped model in bf16 through embedstore's loader, batch
              256 and 1,024, every core a loader worker: from the tensor cache and from PNG (decode +
              preprocess + cache write, a cold cache), 3,818 images per pass
  ft          (b) fine-tuning of the BiomedCLIP-shaped image tower + Linear(512, 14) through
              embedstore's own epoch loop (`embedstore.heads`): the study's fp32 batch 24, embedstore's
              study recipe (fp16 + GradScaler) and multilabel recipe (bf16), batch 24 and 256; seconds
              per epoch of 3,818 images (and of the study's 2,673 train + 573 val), extrapolated from
              the measured steps
  knn         (c) neighbour search (`embedstore.analyses.knn_search.neighbours`) of 45,000 queries
              (15 %, a test split) within a 300,000 × 512 pool, k 10: torch on the GPU vs the CPU path
              (FAISS; torch on the CPU where faiss is missing), seconds and agreement of the ids
  study       (d) the whole study end to end (`embedstore.demo.run_plan`): synthetic 3,818-image
              sample, ingest, zs/lp/ft under the study protocol with the BiomedCLIP-shaped model (ft 10
              epochs, batch 24), analyze with 1,000 resamples, Grad-CAM of 15 test images, charts and
              the report; needs the store's dependencies (STUDY_PACKAGES), skipped without them
  study_encode  the study's loop: one image at a time, fp32, `model.encode_image(x.unsqueeze(0))`,
              `.cpu().numpy()` (encode only, and with PNG decode + preprocess per image)
  batched     embedstore's encoding (`embedstore.images.prepare_encoder` / `encode_batch`, the code
              `extract` runs) on uint8 batches in pinned host memory: bf16 autocast + channels-last
              (embedstore) and fp32 (the study protocol), per batch size
  cache       the same from the on-disk tensor cache through embedstore's loader (`TensorCache`,
              `CachedImages`, `batches`: DataLoader worker processes), 3,818 images per pass
  decode      embedstore's PNG decode + preprocess + cache write per image (one core), for the
              cold-cache estimate
  lp          embedstore's lp (`fit_study_head`, `fit_logistic_head`) on 2,673 × 512 cached
              embeddings vs the study's lp, which re-encodes every train image in every epoch
  text        zero-shot prompt encoding (as `extract --mode zs` does it, on the CPU)
  estimate    the full three-setting IU-Xray study (zs + lp + ft 10 epochs + analyses), an ESTIMATE
              assembled from the measured parts (the `study` section is the measured figure)

Images are synthetic seeded uint8 tensors (and synthetic PNGs); the weights are seeded random ones
(nothing is downloaded): open_clip's built-in `ViT-B-16` for study_encode … text (the same ViT-B/16 at
224 px as BiomedCLIP's image tower, so the same cost) and the BiomedCLIP-shaped model for the rest.

It runs with PYTHONPATH=<repo root> alone (no install). Most sections import only embedstore modules
free of the store's dependencies (models, images, heads, prompts, labels); `knn` also needs
`embedstore.analyses`, which an install maps from analyses/ (pyproject.toml's package-dir), so
`map_source_packages` registers it from its folder when it is not installed; `study` needs the store's
dependencies (carry their wheels) and records a skipped row without them.

Usage (CUDA required):  PYTHONPATH=. python3 bench/gpu.py --out gpu-bench
  writes gpu-bench/gpu.json (every figure) and gpu-bench/gpu.md (the goals and a table), after each section
Check the script on a CPU: .venv/bin/python bench/gpu.py --smoke --out DIR   (tiny sizes; figures meaningless)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import io
import json
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

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 3818          # IU-Xray frontal images
N_TRAIN, N_VAL = 2673, 573  # the study's split
N_LABELS = 14
STUDY_SECONDS = 21 * 60  # the study's three settings took over 21 minutes
BUDGET_STUDY_SECONDS = 120
BUDGET_CACHE_IMAGES_PER_S = 5000  # the budget for encoding from the tensor cache on one H100
TEST_SHARE = 0.15        # the test split's share: the knn section's queries within the pool
KNN_K = 10               # `analyze`'s k
#: Modules the `study` section imports beyond a bare GPU machine's (torch, torchvision, timm, transformers,
#: tokenizers, numpy, pandas, pyarrow, scikit-learn, pillow; open_clip carried for every section), and
#: the wheel that brings each (`pip install` of the first six pulls in the rest and their dependencies).
STUDY_PACKAGES = {"duckdb": "duckdb", "faiss": "faiss-cpu", "polars": "polars", "altair": "altair",
                  "vl_convert": "vl-convert-python", "pytorch_grad_cam": "grad-cam", "cv2": "opencv-python-headless",
                  "matplotlib": "matplotlib", "ttach": "ttach"}
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
    ft_large_batch: int = 256
    ft_images: int = 960
    ft_large_images: int = 2048
    val_images: int = 480
    study_lp_batches: int = 10        # with PNG decode
    study_lp_encode_images: int = N_TRAIN  # one full epoch, already decoded
    lp_train: int = N_TRAIN           # cached embeddings for embedstore's lp
    lp_val: int = N_VAL
    warmup: int = 2
    max_measure_seconds: float = 15.0
    biomed_tiny: bool = False         # the BiomedCLIP-shaped model at tiny sizes (same layout)
    biomed_images: int = N_IMAGES     # images per pass of the biomedclip section
    biomed_batches: tuple[int, ...] = (256, 1024)
    knn_pool: int = 300_000
    knn_dim: int = 512
    knn_check_queries: int = 1000     # queries checked against exact FAISS when the CPU search is approximate
    study_images: int = N_IMAGES
    study_ft_epochs: int = 10
    study_bootstrap: int = 1000
    study_gradcam: int = 15


SMOKE = Sizes(pool=8, per_image=3, per_image_decode=2, pngs=2, png_size=256, encode_batches=(4,), fp32_batches=(4,),
              bf16_images=8, fp32_images=8, cache_images=12, cache_batches=(4,), decode_images=2, ft_batch=2,
              ft_large_batch=4, ft_images=4, ft_large_images=4, val_images=4, study_lp_batches=1,
              study_lp_encode_images=4, lp_train=200, lp_val=50, warmup=1, max_measure_seconds=10.0,
              biomed_tiny=True, biomed_images=12, biomed_batches=(4, 8), knn_pool=2000, knn_dim=32,
              knn_check_queries=50, study_images=60, study_ft_epochs=1, study_bootstrap=20, study_gradcam=2)


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
    pools: dict[int, Any] = field(default_factory=dict)   # pinned uint8 images by side, made once each
    biomed: Any = None                # the BiomedCLIP-shaped model, loaded as `extract` loads it
    biomed_id: str | None = None      # its `local-dir:` id
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
        """Write `gpu.json` (every figure) and `gpu.md` (goals and table) into --out, each atomically."""
        if self.args.out is None:
            return
        self.args.out.mkdir(parents=True, exist_ok=True)
        payload = {**self.report, "table": [dict(zip(("section", "figure", "value", "note"), r, strict=True))
                                            for r in self.rows]}
        for name, text in (("gpu.json", json.dumps(payload, indent=2, default=str)), ("gpu.md", markdown(self))):
            tmp = self.args.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.args.out / name)


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


def pool_batch(bench: Bench, k: int, batch: int, pool: Any = None) -> Any:
    """The k-th uint8 batch of `batch` images, cycling over a pinned pool (default: the built-in model's)."""
    pool = bench.pool if pool is None else pool
    size = pool.shape[0]
    if batch >= size:
        return pool.repeat(math.ceil(batch / size), 1, 1, 1)[:batch]
    start = (k * batch) % (size - batch + 1)
    return pool[start:start + batch]


def image_pool(bench: Bench, side: int) -> Any:
    """`sizes.pool` seeded uint8 images of `side` px in pinned host memory (as the loader's), made once per side."""
    if side not in bench.pools:
        shape = (bench.sizes.pool, 3, side, side)
        generator = torch.Generator(device=bench.device).manual_seed(bench.args.seed)
        made = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator, device=bench.device)
        bench.pools[side] = torch.empty(shape, dtype=torch.uint8, pin_memory=bench.cuda).copy_(made)
    return bench.pools[side]


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


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_source_packages(*names: str) -> list[str]:
    """Make mapped subpackages (`embedstore.analyses`, `embedstore.sql`) importable without an install.

    pyproject.toml's `[tool.setuptools] package-dir` maps analyses/ and sql/ into the package; an
    (editable) install sees them, PYTHONPATH=<repo root> alone does not. Each of `names` that does not
    import is registered from its folder (a regular package: its modules and `importlib.resources`
    files are found there). Returns the names registered here."""
    import tomllib

    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    registered = []
    for name in names:
        try:
            importlib.import_module(name)
            continue
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
        folder = REPO / mapping[name]
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"{name}: no package in {folder}", name=name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        setattr(importlib.import_module(parent), child, module)
        registered.append(name)
    return registered


def missing_modules(packages: dict[str, str]) -> list[str]:
    """The wheels of `packages` ({module: wheel}) whose module does not import here (with what is
    missing when it is one of their own dependencies)."""
    missing = []
    for module, wheel in packages.items():
        try:
            importlib.import_module(module)
        except ImportError as error:
            missing.append(wheel if getattr(error, "name", None) == module else f"{wheel} ({error})")
    return missing


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
    """Load the built-in model as `extract` does (embedstore.models.load_model: offline, seeded random
    weights for a built-in, weights sha256), build and load the BiomedCLIP-shaped model, and make the
    synthetic images."""
    from embedstore.models import load_model

    def builtin() -> dict[str, Any]:
        started = time.perf_counter()
        bench.model = load_model(bench.args.model)
        seconds = time.perf_counter() - started
        bench.pool = image_pool(bench, bench.model.image_size)
        bench.row("env", "model load (load_model, CPU, incl. weights sha256)", seconds, "s")
        return {"load_model_seconds": seconds, "image_size": bench.model.image_size, "embed_dim": bench.model.embed_dim,
                "visual_parameters": sum(p.numel() for p in bench.model.model.visual.parameters())}

    def biomed() -> dict[str, Any]:
        from embedstore.shaped_models import BIOMEDCLIP_SHAPE, TINY_BIOMEDCLIP_SHAPE, write_biomedclip_shaped

        shape = TINY_BIOMEDCLIP_SHAPE if bench.sizes.biomed_tiny else BIOMEDCLIP_SHAPE
        started = time.perf_counter()
        model_id = write_biomedclip_shaped(bench.args.scratch / "biomedclip-shaped", shape, bench.args.seed)
        built = time.perf_counter() - started
        started = time.perf_counter()
        bench.biomed = load_model(model_id)
        loaded = time.perf_counter() - started
        bench.biomed_id = model_id
        model = bench.biomed.model
        count = {tower: sum(p.numel() for p in getattr(model, tower).parameters()) for tower in ("visual", "text")}
        bench.row("env", f"BiomedCLIP-shaped model built ({shape.timm_model} + BERT {shape.layers}×{shape.hidden})",
                  built, f"s; {count['visual'] / 1e6:.1f} M + {count['text'] / 1e6:.1f} M parameters, seeded random")
        bench.row("env", "BiomedCLIP-shaped model load (load_model, CPU, incl. weights sha256)", loaded, "s")
        return {"shape": asdict(shape), "build_seconds": built, "load_model_seconds": loaded,
                "visual_parameters": count["visual"], "text_parameters": count["text"],
                "embed_dim": bench.biomed.embed_dim, "image_size": bench.biomed.image_size}

    bench.pngs = synthetic_pngs(bench.sizes.pngs, bench.sizes.png_size, bench.args.seed)
    out = guarded(bench, "setup", f"load {bench.args.model}", builtin)
    out["biomedclip"] = guarded(bench, "setup", "BiomedCLIP-shaped model", biomed)
    return out | {"png_size": bench.sizes.png_size,
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
    from embedstore.shaped_models import write_config, write_random_weights

    write_config(folder, {"embed_dim": 32,
                          "vision_cfg": {"image_size": 48, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
                          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                       "layers": 1}})
    return write_random_weights(folder, seed)


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
    from embedstore.images import CachedImages, ImageItem, TensorCache, encode_autocast, prepare_encoder

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
            return loader_pass(bench, visual, model, dataset, batch, n_workers, dtype)

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
            note = pass_note(result)
            study_rate = (bench.figure("study_encode", "encode_only") or {}).get("images_per_s")
            if study_rate:
                result["ratio_vs_study_per_image"] = result["images_per_s"] / study_rate
                note += f", {result['ratio_vs_study_per_image']:.1f}× the study's per-image loop"
            if role:
                out[role] = result
            if role == "extract_default":
                note += cache_goal_note(result, "budget")
            bench.row("cache", key, result["images_per_s"], note)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def pass_note(result: dict[str, Any]) -> str:
    """A loader pass's row note: how many images, how long, when the first batch came."""
    return (f"img/s; {result['images']:,} images in {result['seconds']:.2f} s, "
            f"first batch after {result['first_batch_seconds']:.2f} s")


def cache_goal_note(result: dict[str, Any], word: str) -> str:
    """The ≥ BUDGET_CACHE_IMAGES_PER_S images/s verdict for a pass from the tensor cache."""
    verdict = "met" if result["images_per_s"] >= BUDGET_CACHE_IMAGES_PER_S else "NOT met"
    return f"; {word} ≥ {BUDGET_CACHE_IMAGES_PER_S:,} on an H100: {verdict}"


def loader_pass(bench: Bench, visual: Any, model: Any, dataset: Any, batch: int, workers: int,
                dtype: Any) -> dict[str, Any]:
    """One pass over `dataset` (embedstore's `CachedImages`) through `batches` and `encode_batch`, as
    `extract` encodes: images/s, and when the first batch came."""
    from embedstore.images import batches, encode_batch

    bench.sync()
    started = time.perf_counter()
    first = None
    done = 0
    for _, images in batches(dataset, batch, workers):
        if first is None:
            first = time.perf_counter() - started
        encode_batch(visual, images, model.mean, model.std, bench.device, dtype).cpu().numpy()
        done += len(images)
    bench.sync()
    seconds = time.perf_counter() - started
    return {"images": done, "seconds": seconds, "images_per_s": done / seconds,
            "first_batch_seconds": first, "batch": batch, "workers": workers}


def biomedclip(bench: Bench) -> dict[str, Any]:
    """(a) The BiomedCLIP-shaped model in bf16 through embedstore's loader, every core a worker: from
    the tensor cache, and from PNG (decode + preprocess + cache write, as `extract` on a cold cache)."""
    from embedstore.images import CachedImages, ImageItem, TensorCache, encode_autocast, prepare_encoder

    model, sizes = bench.biomed, bench.sizes
    pool = image_pool(bench, model.image_size)
    visual = prepare_encoder(model.model.visual, bench.device)
    dtype = encode_autocast(bench.device)
    label = "bf16" if dtype is not None else "fp32 (CPU)"
    workers = cores()
    root = Path(tempfile.mkdtemp(prefix="embedstore-gpu-bench-biomed-"))
    out: dict[str, Any] = {"workers": workers, "images": sizes.biomed_images, "precision": label,
                           "png_size": sizes.png_size}
    try:
        cache = TensorCache(root / "cache", model.preprocess_key)
        (root / "png").mkdir()
        cached, pngs = [], []
        for i in range(sizes.biomed_images):
            sha = hashlib.sha256(f"biomed-{i}".encode()).hexdigest()
            cache.put(sha, pool[i % pool.shape[0]].numpy())
            cached.append(ImageItem(i, f"/nonexistent/biomed-{i}.png", sha))  # never decoded: every tensor is cached
            path = root / "png" / f"{i}.png"
            path.write_bytes(bench.pngs[i % len(bench.pngs)])
            pngs.append(ImageItem(i, str(path), hashlib.sha256(f"png-{i}".encode()).hexdigest()))
        first = sizes.biomed_batches[0]
        passes = [("warm-up", cached, first)] + [("cache", cached, b) for b in sizes.biomed_batches]
        passes += [("png", pngs, b) for b in sizes.biomed_batches]
        for source, items, batch in passes:
            cold = root / f"cold-{batch}"   # a fresh cache per PNG pass: every image is decoded
            store = TensorCache(cold, model.preprocess_key) if source == "png" else cache
            dataset = CachedImages(items, store, model.pixel_transform)
            what = (f"{label} from the tensor cache" if source != "png" else
                    f"{label} from {sizes.png_size} px PNG (decode + preprocess + cache write)")
            figure = f"{what}, batch {batch:,}, {workers} workers"
            result = guarded(bench, "biomedclip", figure,
                             partial(loader_pass, bench, visual, model, dataset, batch, workers, dtype))
            shutil.rmtree(cold, ignore_errors=True)
            out[f"{source}_bs{batch}" if source != "warm-up" else "warm_up"] = result
            if "error" in result or source == "warm-up":
                continue
            note = pass_note(result) + (cache_goal_note(result, "goal") if source == "cache" else "")
            bench.row("biomedclip", figure, result["images_per_s"], note)
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
    """(b) Fine-tuning steps of the BiomedCLIP-shaped image tower through embedstore's epoch loop
    (heads._train_epoch / _val_loss), and the seconds per epoch they extrapolate to."""
    from embedstore.heads import FineTuneData, _train_epoch, _val_loss, _xavier_head
    from embedstore.images import normalize

    model, sizes = bench.biomed, bench.sizes
    pool = image_pool(bench, model.image_size)
    visual = model.model.visual.to(bench.device).to(memory_format=torch.contiguous_format)  # as a fresh ft run
    generator = torch.Generator().manual_seed(bench.args.seed)
    targets = (torch.rand((max(sizes.ft_large_batch, sizes.ft_batch) * 4, N_LABELS), generator=generator) < 0.08)
    targets = targets.float().to(bench.device)
    out: dict[str, Any] = {"model": "BiomedCLIP-shaped", "image_size": model.image_size}

    def data(batch: int, steps: int, dtype: Any) -> FineTuneData:
        def generate(count: int) -> Iterator[tuple[Any, Any]]:
            for k in range(count):
                rows = targets[(k * batch) % (len(targets) - batch + 1):][:batch]
                yield normalize(pool_batch(bench, k, batch, pool), model.mean, model.std, bench.device), rows

        return FineTuneData(train_batches=lambda epoch: generate(steps), val_batches=lambda: generate(steps),
                            device=bench.device, autocast_dtype=dtype, batches_per_epoch=steps)

    variants = [
        ("study's own ft: fp32", "study_fp32", sizes.ft_batch, None, False, sizes.ft_images),
        ("embedstore study recipe: fp16 + GradScaler", "study_recipe", sizes.ft_batch, torch.float16, True,
         sizes.ft_images),
        ("embedstore study recipe: fp16 + GradScaler", "study_recipe_large", sizes.ft_large_batch, torch.float16,
         True, sizes.ft_large_images),
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
        return {"batch": batch, "train_steps": steps, "val_steps": val_steps, "train_images_per_s": train,
                "val_images_per_s": val, "epoch_seconds": N_TRAIN / train + N_VAL / val,
                "epoch_3818_train_seconds": N_IMAGES / train, "dtype": str(dtype),
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
        measured = f"extrapolated from {result['train_steps']} measured steps"
        bench.row("ft", f"{label}, batch {batch}: train", result["train_images_per_s"], "img/s")
        bench.row("ft", f"{label}, batch {batch}: one epoch of {N_IMAGES:,} {model.image_size} px images (train)",
                  result["epoch_3818_train_seconds"], f"s, {measured}; images already in pinned memory")
        bench.row("ft", f"{label}, batch {batch}: one study epoch ({N_TRAIN:,} train + {N_VAL} val)",
                  result["epoch_seconds"], f"s, {measured} and {result['val_steps']} val steps")
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
    from embedstore.choices import Protocol
    from embedstore.labels import CHEXPERT_LABELS
    from embedstore.prompts import DEFAULT_PROMPTS, build_prompts

    out: dict[str, Any] = {}
    for protocol in Protocol:
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


def knn(bench: Bench) -> dict[str, Any]:
    """(c) `analyze`'s within-split neighbour search (k 10) of a test split's queries (15 % of the pool,
    taken from it) on clustered synthetic embeddings: torch on the GPU vs the CPU path, seconds and
    whether both find the same neighbours."""
    map_source_packages("embedstore.analyses")
    from embedstore.analyses.knn_search import exact_candidates, keep_neighbours, neighbours, recall_at_k, unit32
    from embedstore.choices import SearchDevice

    sizes = bench.sizes
    n, dim, k = sizes.knn_pool, sizes.knn_dim, KNN_K
    rng = np.random.default_rng(bench.args.seed)
    started = time.perf_counter()
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors *= 0.5
    vectors += rng.standard_normal((64, dim), dtype=np.float32)[rng.integers(0, 64, n)]   # 64 clusters
    ids = np.arange(1, n + 1, dtype=np.int64)                                                # sample ids
    rows = np.sort(rng.choice(n, round(n * TEST_SHARE), replace=False))
    queries, query_ids = vectors[rows], ids[rows]
    out: dict[str, Any] = {"pool": n, "dim": dim, "queries": len(rows), "k": k,
                           "data_seconds": time.perf_counter() - started}

    def pool_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, n, 65536):
            yield ids[start:start + 65536], vectors[start:start + 65536]

    def search(device: SearchDevice, count: int | None = None) -> tuple[np.ndarray, dict[str, Any], float]:
        begun = time.perf_counter()
        found, params = neighbours(queries[:count], query_ids[:count], pool_batches, n, k, device=device)
        return found, params, time.perf_counter() - begun

    where = SearchDevice.CUDA if bench.cuda else SearchDevice.TORCH_CPU   # --smoke: the same code on the CPU
    search(where, 64)   # warm-up: CUDA context, cuBLAS
    gpu, gpu_params, out["gpu_seconds"] = search(where)
    scope = f"{len(rows):,} queries within a {n:,} × {dim} pool, k {k}"
    bench.row("knn", f"torch ({where}): {scope}", out["gpu_seconds"],
              f"s; {gpu_params['search']}" + ("" if bench.cuda else "; smoke: torch-cpu in place of cuda"))
    have_faiss = importlib.util.find_spec("faiss") is not None
    cpu_device = SearchDevice.CPU if have_faiss else SearchDevice.TORCH_CPU
    cpu, cpu_params, out["cpu_seconds"] = search(cpu_device)
    out |= {"gpu_search": gpu_params, "cpu_search": cpu_params, "cpu_device": str(cpu_device)}
    bench.row("knn", f"CPU path ({cpu_device}, {cores()} cores): {scope}", out["cpu_seconds"],
              f"s; {cpu_params['search']}" + ("" if have_faiss else "; faiss is not installed, so the CPU side "
                                              "is torch on the CPU (carry the faiss-cpu wheel for FAISS)"))
    bench.row("knn", "CPU seconds ÷ torch seconds", f"{out['cpu_seconds'] / out['gpu_seconds']:,.1f}×")
    out["identical_sets_share"] = float((np.sort(gpu, axis=1) == np.sort(cpu, axis=1)).all(axis=1).mean())
    out["identical_order_share"] = float((gpu == cpu).all(axis=1).mean())
    out["recall_at_k"] = recall_at_k(cpu, gpu)
    bench.row("knn", f"identical neighbour id sets, torch vs CPU path ({len(rows):,} queries)",
              f"{100 * out['identical_sets_share']:.3f} %",
              f"same order {100 * out['identical_order_share']:.3f} %, recall@{k} of the CPU path "
              f"{out['recall_at_k']:.4f}")
    # Against exact FAISS (a sample, when the CPU path was approximate): the same neighbours up to exact
    # ties, so the neighbour figures agree; the cosine of every kth neighbour must agree to 1e-6.
    check = np.sort(rng.choice(len(rows), min(sizes.knn_check_queries, len(rows)), replace=False))
    unit_queries = unit32(queries[check])
    if have_faiss and not cpu_params["search"].startswith("exact"):
        reference = keep_neighbours(exact_candidates(unit_queries, pool_batches, k + 1), query_ids[check], k, None)
        reference_name = "exact FAISS"
    else:
        reference, reference_name = cpu[check], f"the CPU path ({cpu_params['search']})"

    def cosines(found: np.ndarray) -> np.ndarray:
        neighbours_unit = unit32(vectors[np.clip(found, 1, n).ravel() - 1]).reshape(*found.shape, dim)
        return np.sort(np.einsum("qd,qkd->qk", unit_queries.astype(np.float64), neighbours_unit.astype(np.float64)))

    out["check_queries"] = len(check)
    out["check_reference"] = reference_name
    out["check_identical_sets_share"] = float((np.sort(gpu[check], axis=1) == np.sort(reference, axis=1))
                                              .all(axis=1).mean())
    out["check_max_cosine_difference"] = float(np.abs(cosines(gpu[check]) - cosines(reference)).max())
    bench.row("knn", f"identical neighbour id sets, torch vs {reference_name} ({len(check):,} sampled queries)",
              f"{100 * out['check_identical_sets_share']:.3f} %")
    verdict = "within 1e-6" if out["check_max_cosine_difference"] <= 1e-6 else "NOT within 1e-6"
    bench.row("knn", f"largest difference of a neighbour's cosine, torch vs {reference_name}",
              f"{out['check_max_cosine_difference']:.2e}", verdict)
    return out


def study(bench: Bench) -> dict[str, Any]:
    """(d) The whole study, measured end to end: `embedstore.demo.run_plan` under the study protocol
    with the BiomedCLIP-shaped model, in a fresh store (the same steps as `embedstore demo`)."""
    missing = missing_modules(STUDY_PACKAGES)
    if missing:
        note = f"skipped: needs {', '.join(missing)} (carry their wheels)"
        bench.row("study", "whole study end to end", "skipped", note)
        return {"skipped": note}
    map_source_packages("embedstore.analyses", "embedstore.sql")
    from embedstore.choices import Protocol
    from embedstore.demo import DemoPlan, run_plan

    sizes = bench.sizes
    assert bench.biomed_id is not None
    plan = DemoPlan(n_images=sizes.study_images, model=bench.biomed_id, ft_epochs=sizes.study_ft_epochs,
                    bootstrap=sizes.study_bootstrap, protocols=(Protocol.STUDY,), gradcam_validate=sizes.study_gradcam,
                    gradcam_maps=sizes.study_gradcam, sample_workers=cores(), source_images=sizes.study_images)
    root = Path(tempfile.mkdtemp(prefix="embedstore-gpu-bench-study-"))
    try:
        started = time.perf_counter()
        result = run_plan(root / "store", plan)
        total = time.perf_counter() - started
        report_written = result.report.is_file()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seconds = total - result.seconds.get("sample", 0.0)
    epochs = f"{plan.ft_epochs} epoch{'s' if plan.ft_epochs != 1 else ''}"
    plan_text = (f"{plan.n_images:,} images, study protocol, BiomedCLIP-shaped model, ft {epochs} at "
                 f"batch 24, analyze with {plan.bootstrap:,} resamples, Grad-CAM of {sizes.study_gradcam} test images, "
                 "charts, report")
    bench.row("study", "plan", plan_text)
    verdict = "met" if seconds <= BUDGET_STUDY_SECONDS else "NOT met"
    bench.row("study", "whole study, ingest → report (measured)", seconds, f"s; goal < {BUDGET_STUDY_SECONDS} s: "
              f"{verdict}; the study: {STUDY_SECONDS} s ({STUDY_SECONDS / seconds:.1f}×)")
    bench.row("study", "with writing the synthetic sample first", total, f"s ({cores()} writer processes)")
    for step, step_seconds in result.seconds.items():
        bench.row("study", f"  {step}", step_seconds, "s")
    return {"plan": asdict(plan), "study_seconds": seconds, "total_seconds": total, "steps": result.seconds,
            "report_written": report_written}


def goals(bench: Bench) -> list[tuple[str, str, str]]:
    """The issue's goals beside the measured figures: (goal, measured, verdict)."""
    sections = bench.report.get("sections", {})
    out = []
    encoded = sections.get("biomedclip", {})
    for batch in bench.sizes.biomed_batches:
        rate = (encoded.get(f"cache_bs{batch}") or {}).get("images_per_s")
        out.append((f"≥ {BUDGET_CACHE_IMAGES_PER_S:,} images/s from the tensor cache (BiomedCLIP-shaped, "
                     f"{encoded.get('precision', 'bf16')}, batch {batch:,}, one H100)",
                    "not measured" if rate is None else f"{rate:,.0f} images/s",
                    "—" if rate is None else "met" if rate >= BUDGET_CACHE_IMAGES_PER_S else "NOT met"))
    seconds = sections.get("study", {}).get("study_seconds")
    out.append((f"whole study ({bench.sizes.study_images:,} images, ingest → report) under {BUDGET_STUDY_SECONDS} s",
                "not measured" if seconds is None else f"{seconds:,.1f} s",
                "—" if seconds is None else "met" if seconds <= BUDGET_STUDY_SECONDS else "NOT met"))
    return out


def markdown(bench: Bench) -> str:
    """gpu.md: the machine, the goals beside the measured figures, and every figure as a table."""
    env = bench.report.get("env", {})

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# embedstore GPU benchmark — {env.get('device_name')}", "",
             f"torch {env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), open_clip "
             f"{env.get('open_clip_torch')}, Python {env.get('python')}, {env.get('cpu_count')} CPUs; total "
             f"{_fmt(bench.report.get('total_seconds'))} s, peak GPU memory {_fmt(bench.report.get('peak_gpu_memory_gib'))}"
             f" GiB{'. **SMOKE RUN: tiny sizes, the figures mean nothing.**' if bench.args.smoke else ''}", "",
             "## Goals", "", "| goal | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {cell(goal)} | {cell(measured)} | {verdict} |" for goal, measured, verdict in goals(bench)]
    lines += ["", "## Every figure", "", "| section | figure | value | note |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(cell(text) for text in row) + " |" for row in bench.rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

#: (name, function, what it needs: "model" the built-in, "biomed" the BiomedCLIP-shaped one, or None);
#: the issue's four figures first, so that --max-seconds leaves out only the older detail.
SECTIONS: list[tuple[str, Callable[[Bench], dict[str, Any]], str | None]] = [
    ("biomedclip", biomedclip, "biomed"),
    ("ft", ft, "biomed"),
    ("knn", knn, None),
    ("study", study, "biomed"),
    ("study_encode", study_encode, "model"),
    ("batched", batched, "model"),
    ("cache", cache, "model"),
    ("decode", decode, "model"),
    ("lp", lp, None),
    ("text", text, "model"),
    ("estimate", estimate, None),
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
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write gpu.json (every figure) and gpu.md (goals and table) into, after each section")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed: checks the script runs")
    parser.add_argument("--model", default=None,
                        help="model id for embedstore.models.load_model (default: the built-in ViT-B-16 with seeded "
                             "random weights; with --smoke, a tiny local-dir ViT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=400.0,
                        help="no section starts after this many seconds (default 400: the run stays under 8 minutes)")
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
    args.scratch = scratch
    try:
        if args.model is None:
            args.model = smoke_model(scratch / "smoke-vit", args.seed) if args.smoke else "ViT-B-16"
        return run(args, sizes, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, sizes: Sizes, device: torch.device) -> int:
    bench = Bench(args, sizes, device)
    bench.report["env"] = environment(bench)
    bench.save()
    print(f"embedstore GPU benchmark on {bench.report['env']['device_name']}, torch {torch.__version__}", flush=True)
    run_section(bench, "setup", load)
    loaded = {"model": bench.model is not None, "biomed": bench.biomed is not None}
    for name, function, needs in SECTIONS:
        if needs is not None and not loaded[needs]:
            which = "the model" if needs == "model" else "the BiomedCLIP-shaped model"
            bench.report["sections"][name] = {"skipped": f"{which} did not load (see setup)"}
            bench.row(name, "skipped", f"{which} did not load (see setup)")
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
