"""Extraction benchmarks (figures in docs/benchmarks.md, "Extraction"), each against a faithful
re-implementation of the study's own loop run in the same process on the same model and images:

1. encoding throughput: the notebook's per-image loop (open, preprocess, encode one image) vs
   `embedstore extract --mode zs` (batched, tensor cache; cold and warm cache);
2. linear probe: the notebook's lp, which pushes every training image through the frozen encoder
   in every epoch, vs embedstore's lp fitted on the stored embeddings (study and multilabel recipes);
3. ft seconds per epoch;
4. the study's qualitative finding on the demo model and the synthetic target set: zs well above
   chance on macro AUROC yet over-predicting under the study protocol, and ft > lp > zs;
5. decoding a MIMIC-sized JPEG (2,500 × 3,000, quality 95) to the model's input: the study's
   `Image.open(p).convert("RGB")` then the model's transform, vs embedstore's decoder (libjpeg's
   DCT-domain draft to the model's Resize target, then the same transform); per-image ms, ratio and
   the largest pixel difference of the two resulting tensors. `--only large-jpeg` runs this case alone.

Usage: .venv/bin/python bench/extraction.py [--n 3818] [--baseline-images 400] [--ft-epochs 10] [--out DIR]
       .venv/bin/python bench/extraction.py --only large-jpeg [--jpegs 24]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from embedstore.extract import ExtractConfig, describe_device, extract
from embedstore.heads import fit_logistic_head, fit_study_head
from embedstore.images import ImageItem, decode
from embedstore.ingest import IngestConfig, ingest
from embedstore.models import load_model
from embedstore.store import Store
from embedstore.synthetic import SampleConfig, SampleDomain, render_frontal, write_sample

log = logging.getLogger("bench")


def _study_preprocess(model):
    """open_clip's own preprocess (pixel steps + Normalize), as the notebook applies it per image."""
    from torchvision import transforms

    return transforms.Compose([*model.pixel_transform.transforms, transforms.Normalize(model.mean, model.std)])


def study_per_image_encode(model, paths: list[str]) -> float:
    """The notebook: one image at a time — open, preprocess, add a batch axis, encode, to numpy."""
    preprocess = _study_preprocess(model)
    started = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            model.model.encode_image(preprocess(Image.open(path)).unsqueeze(0)).cpu().numpy()
    return time.perf_counter() - started


def study_lp_epoch(model, paths: list[str], targets: np.ndarray, batch_size: int = 24) -> float:
    """One epoch of the notebook's lp: every batch of train images goes through the frozen encoder
    again (decode, preprocess, encode) before the head's step."""
    head = torch.nn.Linear(model.embed_dim, targets.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=1e-2)
    preprocess = _study_preprocess(model)
    started = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(paths))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        images = torch.stack([preprocess(Image.open(paths[i])) for i in batch])
        with torch.no_grad():
            features = model.model.encode_image(images)
        loss = F.binary_cross_entropy_with_logits(head(features), torch.from_numpy(targets[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


#: A MIMIC-CXR-JPG film: about 2,500 × 3,000 pixels, stored at JPEG quality 95 (the dataset's 570 GB
#: over 377,110 images is about 1.5 MB a file; these synthetic films come out at about 1.8 MB).
LARGE_JPEG_SIZE = (2500, 3000)   # (width, height)
LARGE_JPEG_QUALITY = 95
#: Film grain added to the upscaled synthetic film (grey levels, 1 sd), so the JPEG has fine detail to encode.
LARGE_JPEG_GRAIN = 1.0


def write_large_jpegs(folder: Path, count: int) -> list[Path]:
    """`count` synthetic chest films at MIMIC size: a frontal rendered at 750 px, upscaled (bicubic),
    with film grain, saved as greyscale JPEG."""
    paths = []
    for index in range(count):
        film, _ = render_frontal(0, SampleDomain.TARGET, index, (), {}, 750)
        pixels = np.asarray(Image.fromarray(film).resize(LARGE_JPEG_SIZE, Image.Resampling.BICUBIC), dtype=np.float32)
        pixels += np.random.default_rng(index).normal(0.0, LARGE_JPEG_GRAIN, pixels.shape).astype(np.float32)
        path = folder / f"film{index:03d}.jpg"
        Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(path, quality=LARGE_JPEG_QUALITY)
        paths.append(path)
    return paths


def _study_decode(preprocess: Callable[[Image.Image], torch.Tensor], path: Path) -> torch.Tensor:
    """The study's way: a full decode to RGB, then the model's whole preprocess."""
    return preprocess(Image.open(path).convert("RGB"))


def _timed(rounds: int, run: Callable[..., object], *args: object) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `rounds` calls of run(*args): the least disturbed by other work."""
    wall, cpu = [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        run(*args)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), min(cpu)


def large_jpeg_decode(paths: list[Path], sizes: tuple[int, ...] = (224, 64), rounds: int = 3) -> dict[str, object]:
    """Per model input size: ms per image of the study's decode + preprocess vs embedstore's, their
    ratio, and how far apart the two pixel tensors are (in grey levels of 255). Each image is timed
    both ways alternately, best of `rounds`, in wall-clock and in CPU time (the CPU time of this
    process is what other work on a shared machine does not inflate). Both ways run on one torch
    thread, as in a DataLoader worker: on a busy 2-core machine, ToTensor's tiny ops on 2 threads
    wait for each other for 10 ms and more, which would swamp what is measured here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _large_jpeg_decode(paths, sizes, rounds)
    finally:
        torch.set_num_threads(threads)


def _large_jpeg_decode(paths: list[Path], sizes: tuple[int, ...], rounds: int) -> dict[str, object]:
    import open_clip
    from torchvision import transforms

    results: dict[str, object] = {"images": len(paths), "size": f"{LARGE_JPEG_SIZE[0]} x {LARGE_JPEG_SIZE[1]}",
                                  "mean_file_mb": round(float(np.mean([p.stat().st_size for p in paths])) / 1e6, 2)}
    for size in sizes:
        preprocess = open_clip.image_transform(size, is_train=False)   # open_clip's eval transform, as models load it
        pixel_transform = transforms.Compose(list(preprocess.transforms)[:-1])   # without Normalize, as extract caches
        study = np.zeros(2)
        embedstore = np.zeros(2)
        largest, mean_difference = 0, []
        decode(ImageItem(0, str(paths[0]), ""), pixel_transform)             # warm-up (imports, first allocations)
        for index, path in enumerate(paths):
            item = ImageItem(index, str(path), "")
            study += _timed(rounds, _study_decode, preprocess, path)
            embedstore += _timed(rounds, decode, item, pixel_transform)   # what an extraction worker runs
            full = np.rint(pixel_transform(Image.open(path).convert("RGB")).numpy() * 255.0).astype(np.int16)
            difference = np.abs(full - decode(item, pixel_transform).astype(np.int16))
            largest = max(largest, int(difference.max()))
            mean_difference.append(float(difference.mean()))
        study_ms, embedstore_ms = 1000 * study / len(paths), 1000 * embedstore / len(paths)
        ratio = study_ms / embedstore_ms
        results[f"input_{size}"] = {"study_ms_per_image": round(study_ms[0], 1),
                                    "embedstore_ms_per_image": round(embedstore_ms[0], 1),
                                    "ratio": round(ratio[0], 2),
                                    "study_cpu_ms_per_image": round(study_ms[1], 1),
                                    "embedstore_cpu_ms_per_image": round(embedstore_ms[1], 1),
                                    "cpu_ratio": round(ratio[1], 2),
                                    "max_abs_pixel_difference_of_255": largest,
                                    "mean_abs_pixel_difference_of_255": round(float(np.mean(mean_difference)), 3)}
        print(f"large JPEG -> {size} px: study {study_ms[0]:.1f} ms/image, embedstore {embedstore_ms[0]:.1f} ms/image, "
              f"ratio {ratio[0]:.2f}x (CPU time: {study_ms[1]:.1f} vs {embedstore_ms[1]:.1f} ms, {ratio[1]:.2f}x); "
              f"tensors differ by at most {largest}/255 (mean {np.mean(mean_difference):.3f}/255)", flush=True)
    return results


def _matrix(store: Store, run_id: str) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Scores (n × labels), multi-hot targets, label names and splits of a run, by sample id."""
    with store.reader() as con:
        labels = json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0])["labels"]
        rows = con.execute("SELECT s.sample_id, s.split FROM samples s JOIN runs r USING (dataset_id) "
                           "WHERE r.run_id = ? ORDER BY s.sample_id", [run_id]).fetchall()
        scores = con.execute("SELECT sample_id, label, logit FROM scores WHERE run_id = ?", [run_id]).fetchall()
        positives = con.execute("SELECT l.sample_id, l.label FROM labels l JOIN runs r USING (dataset_id) "
                                "WHERE r.run_id = ? AND l.positive", [run_id]).fetchall()
    index = {sid: i for i, (sid, _) in enumerate(rows)}
    matrix = np.zeros((len(rows), len(labels)))
    for sid, label, logit in scores:
        matrix[index[sid], labels.index(label)] = logit
    targets = np.zeros_like(matrix)
    for sid, label in positives:
        targets[index[sid], labels.index(label)] = 1
    return matrix, targets, labels, np.array([split for _, split in rows])


def split_metrics(store: Store, run_id: str) -> dict[str, float]:
    """Macro AUROC on the test split (labels with both classes), and the study protocol's
    row-min-max 0.5 threshold precision / recall (macro)."""
    scores, targets, _, splits = _matrix(store, run_id)
    test = splits == "test"
    s, y = scores[test], targets[test]
    valid = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    auroc = float(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in valid]))
    low, high = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    predicted = ((s - low) / np.where(high > low, high - low, 1)) >= 0.5
    return {
        "macro_auroc": auroc,
        "precision": float(precision_score(y, predicted, average="macro", zero_division=0)),
        "recall": float(recall_score(y, predicted, average="macro", zero_division=0)),
        "predicted_per_image": float(predicted.sum(1).mean()),
        "true_per_image": float(y.sum(1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3818)
    parser.add_argument("--baseline-images", type=int, default=400)
    parser.add_argument("--ft-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--jpegs", type=int, default=24, help="MIMIC-sized JPEGs for the large-JPEG case")
    parser.add_argument("--only", choices=["large-jpeg"], default=None, help="run one case alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = args.out or Path(tempfile.mkdtemp(prefix="embedstore-bench-"))
    jpeg_folder = workdir / "large-jpeg"
    jpeg_folder.mkdir(parents=True, exist_ok=True)
    jpeg_paths = write_large_jpegs(jpeg_folder, args.jpegs)
    if args.only == "large-jpeg":
        print(json.dumps({"torch_threads": torch.get_num_threads(), "large_jpeg": large_jpeg_decode(jpeg_paths)},
                         indent=2))
        return
    data = workdir / "data"
    if not (data / "iuxray_frontal_14labels.csv").exists():
        write_sample(SampleConfig(out=data, n=args.n))
    store, _ = Store.init(workdir / "store")
    with store.reader() as con:
        have = con.execute("SELECT count(*) FROM datasets WHERE name = 'bench'").fetchall()[0][0]
    if not have:
        ingest(store, IngestConfig(path=data, name="bench"))
    model = load_model("demo")
    device = describe_device(torch.device("cpu"))
    with store.reader() as con:
        rows = con.execute("SELECT path, split FROM samples ORDER BY sample_id").fetchall()
    paths = [p for p, _ in rows]
    report: dict[str, object] = {"device": device, "torch_threads": torch.get_num_threads(), "n_images": len(paths)}
    report["large_jpeg"] = large_jpeg_decode(jpeg_paths)

    # 1. encoding throughput
    subset = paths[: args.baseline_images]
    per_image_seconds = study_per_image_encode(model, subset)
    per_image_rate = len(subset) / per_image_seconds
    cold = extract(store, ExtractConfig(mode="zs", model="demo", data="bench", protocol="study"))
    cold_rate = len(paths) / cold.extract_seconds if cold.extract_seconds else float("nan")
    warm = extract(store, ExtractConfig(mode="zs", model="demo", data="bench", protocol="multilabel"))
    warm_rate = len(paths) / warm.extract_seconds if warm.extract_seconds else float("nan")
    report["encode"] = {
        "study_per_image_images_per_s": round(per_image_rate, 1),
        "embedstore_cold_cache_images_per_s": round(cold_rate, 1),
        "embedstore_warm_cache_images_per_s": round(warm_rate, 1),
        "ratio_cold": round(cold_rate / per_image_rate, 2),
        "ratio_warm": round(warm_rate / per_image_rate, 2),
    }

    # 2. linear probe: study's re-encoding epoch vs fitting on stored embeddings
    train_paths = [p for p, s in rows if s == "train"]
    _, targets, labels, splits = _matrix(store, cold.run_id)
    train_targets = targets[splits == "train"].astype(np.float32)
    study_epoch = study_lp_epoch(model, train_paths, train_targets)
    study_lp_total = study_epoch * 10
    with store.reader() as con:
        from embedstore.embeddings import read_image_embeddings

        _, embeddings = read_image_embeddings(con, cold.run_id)
    tx, vx = embeddings[splits == "train"], embeddings[splits == "val"]
    ty, vy = targets[splits == "train"].astype(np.float32), targets[splits == "val"].astype(np.float32)
    study_fit = fit_study_head(tx, ty, vx, vy)
    logistic_fit = fit_logistic_head(tx, ty, vx, vy)
    synthetic = np.random.default_rng(0).normal(size=(2673, 512)).astype(np.float32)
    synthetic_y = (np.random.default_rng(1).random((2673, 14)) < 0.08).astype(np.float32)
    big_study = fit_study_head(synthetic[:2100], synthetic_y[:2100], synthetic[2100:], synthetic_y[2100:])
    big_logistic = fit_logistic_head(synthetic, synthetic_y, synthetic[:573], synthetic_y[:573])
    report["lp"] = {
        "study_reencode_seconds_per_epoch": round(study_epoch, 2),
        "study_reencode_seconds_10_epochs": round(study_lp_total, 1),
        "embedstore_study_recipe_seconds": round(study_fit.seconds, 3),
        "embedstore_logistic_seconds": round(logistic_fit.seconds, 3),
        "ratio_study_recipe": round(study_lp_total / study_fit.seconds, 1),
        "ratio_logistic": round(study_lp_total / logistic_fit.seconds, 1),
        "iuxray_size_2673x512_study_recipe_seconds": round(big_study.seconds, 3),
        "iuxray_size_2673x512_logistic_seconds": round(big_logistic.seconds, 3),
    }

    # 3/4. the three settings on the demo model
    runs = {
        "zs (study)": cold,
        "zs (multilabel)": warm,
        "lp (study)": extract(store, ExtractConfig(mode="lp", model="demo", data="bench", protocol="study")),
        "lp (multilabel)": extract(store, ExtractConfig(mode="lp", model="demo", data="bench")),
        "ft (study)": extract(store, ExtractConfig(mode="ft", model="demo", data="bench", protocol="study",
                                                   epochs=args.ft_epochs)),
        "ft (multilabel)": extract(store, ExtractConfig(mode="ft", model="demo", data="bench",
                                                        epochs=args.ft_epochs)),
    }
    with store.reader() as con:
        epochs_run = {name: json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?",
                                                   [r.run_id]).fetchall()[0][0]).get("epochs_run")
                      for name, r in runs.items()}
    report["ft_seconds_per_epoch"] = {
        name: round(r.train_seconds / epochs_run[name], 1) for name, r in runs.items()
        if name.startswith("ft") and r.train_seconds and epochs_run[name]
    }
    report["settings"] = {name: {**{k: round(v, 3) for k, v in split_metrics(store, r.run_id).items()},
                                 "train_seconds": r.train_seconds and round(r.train_seconds, 1),
                                 "extract_seconds": r.extract_seconds and round(r.extract_seconds, 1),
                                 "run_id": r.run_id}
                          for name, r in runs.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
