"""Analysis speed and memory (figures in docs/benchmarks.md, "Analyses"): all analyses of one run from
the store, against the study's way run in the same process on the same vectors (scikit-learn
in-sample KNeighborsClassifier and exact silhouette on the analysed split).

A synthetic run (IU-Xray-like label prevalence, 70/15/15 split, 512-d embeddings of intrinsic
dimension 32) is written straight into a temporary store, in chunks; each size is then analysed in a
fresh child process, as `embedstore analyze` does it, so that its peak RSS is the analysis's own:
load + every multilabel analysis with intervals first (the budget figure, and the peak RSS after
it), then the same without intervals, then the study protocol with intervals. Above
STUDY_WAY_EXACT_ROWS test rows the study's way (quadratic in the split) is measured on a seeded
subsample of that many rows and scaled by the square of the ratio: the output says so.

Usage: .venv/bin/python bench/analyze.py [--sizes 3818 300000 1000000] [--bootstrap 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.rundata import load_run
from embedstore.analyses.study import analyze_run
from embedstore.embeddings import insert_image_embeddings
from embedstore.labels import CHEXPERT_LABELS
from embedstore.store import Store, append_rows
from embedstore.synthetic import IUXRAY_COUNTS, IUXRAY_FRONTAL

#: Rows written per transaction chunk when building the synthetic store (bounds the builder's memory).
BUILD_CHUNK = 100_000

#: The synthetic embeddings' intrinsic dimension: image embeddings of a trained encoder lie near a
#: low-dimensional manifold (isotropic 512-d noise is the worst case for any approximate index).
LATENT_DIM = 32


def synthetic_run(store: Store, n: int, dim: int = 512, seed: int = 0) -> str:
    """Write a complete synthetic lp run of `n` samples (IU-Xray label prevalence, 70/15/15 split): a
    32-d latent per sample (label directions + noise) lifted to `dim` by a fixed random matrix, plus
    small isotropic noise; scores = target + noise. Written in chunks; returns the run id."""
    rng = np.random.default_rng(seed)
    labels = list(CHEXPERT_LABELS)
    prevalence = np.array([IUXRAY_COUNTS[label] / IUXRAY_FRONTAL for label in labels])
    directions = rng.normal(size=(len(labels), LATENT_DIM))
    lift = rng.normal(size=(LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)
    run_id = f"bench-{n}"
    with store.writer("bench") as writer:
        with writer.transaction() as con:
            con.execute("INSERT INTO datasets (dataset_id, name, format, source, manifest_sha256, n_samples, "
                        "split_method, skipped, checks, created_at, options) VALUES ('d', 'bench', 'manifest', "
                        "'synthetic', 'x', ?, 'given', '[]', '{}', ?, '{}')", [n, datetime.now()])
            con.execute("INSERT INTO runs (run_id, mode, protocol, model_id, dataset_id, config, status, train_seconds)"
                        " VALUES (?, 'lp', 'multilabel', 'synthetic', 'd', ?, 'complete', 1.0)",
                        [run_id, json.dumps({"labels": labels})])
        for start in range(0, n, BUILD_CHUNK):
            size = min(BUILD_CHUNK, n - start)
            targets = (rng.random((size, len(labels))) < prevalence).astype(np.int8)
            targets[targets[:, :-1].sum(1) > 0, -1] = 0
            targets[targets.sum(1) == 0, -1] = 1
            latent = rng.normal(size=(size, LATENT_DIM)) + targets @ directions
            embeddings = (latent @ lift + 0.1 * rng.normal(size=(size, dim))).astype(np.float32)
            scores = targets * 1.0 + rng.normal(size=targets.shape)
            ids = np.arange(start + 1, start + size + 1, dtype=np.int64)
            splits = rng.choice(["train", "val", "test"], size=size, p=[0.7, 0.15, 0.15])
            pairs = size * len(labels)
            with writer.transaction() as con:
                append_rows(con, "samples", pa.table({
                    "dataset_id": pa.array(["d"] * size), "sample_id": pa.array(ids), "uid": pa.array(ids.astype(str)),
                    "filename": pa.array(ids.astype(str)), "path": pa.array(ids.astype(str)),
                    "split": pa.array(splits), "report": pa.array([""] * size),
                    "projection": pa.array(["Frontal"] * size), "image_sha256": pa.array([""] * size),
                    "patient": pa.nulls(size, pa.string())}))
                append_rows(con, "labels", pa.table({
                    "dataset_id": pa.array(["d"] * pairs), "sample_id": pa.array(np.repeat(ids, len(labels))),
                    "label": pa.array(labels * size), "value": pa.array(targets.reshape(-1), pa.int8()),
                    "positive": pa.array(targets.reshape(-1) == 1)}))
                insert_image_embeddings(con, run_id, ids, embeddings)
                append_rows(con, "scores", pa.table({
                    "run_id": pa.array([run_id] * pairs), "sample_id": pa.array(np.repeat(ids, len(labels))),
                    "label": pa.array(labels * size), "logit": pa.array(scores.reshape(-1))}))
    return run_id


#: Above this many test rows the study's way is measured on a subsample and scaled (it is quadratic).
STUDY_WAY_EXACT_ROWS = 30_000


def study_way(x: np.ndarray, classes: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """The notebook's neighbour and cluster figures, in-sample 5-NN and exact silhouette: seconds, and
    how they were obtained (measured, or estimated from a subsample)."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    how = "measured"
    scale = 1.0
    if len(x) > STUDY_WAY_EXACT_ROWS:
        keep = np.random.default_rng(seed).choice(len(x), STUDY_WAY_EXACT_ROWS, replace=False)
        scale = (len(x) / STUDY_WAY_EXACT_ROWS) ** 2
        x, classes = x[keep], classes[keep]
        how = f"estimated: measured on {STUDY_WAY_EXACT_ROWS:,} rows x (n / {STUDY_WAY_EXACT_ROWS:,})^2"
    started = time.perf_counter()
    KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(x, classes).score(x, classes)
    silhouette_score(x, classes, metric="cosine")
    return (time.perf_counter() - started) * scale, how


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(store_path: Path, run_id: str, bootstrap: int, warm_up: bool) -> dict[str, object]:
    """Run in the child: time load + analyses as `embedstore analyze` does, and record the peak RSS."""
    store = Store.open(store_path)
    if warm_up:  # imports and thread pools, on a tiny slice of work
        analyze_run(load_run(store, run_id), AnalysisOptions(protocol="multilabel", bootstrap=2))
    started = time.perf_counter()
    run = load_run(store, run_id)
    loaded = time.perf_counter() - started
    rows = analyze_run(run, AnalysisOptions(protocol="multilabel", bootstrap=bootstrap))
    total = time.perf_counter() - started
    peak = peak_rss_mib()
    searches = {str(r.params["scope"]): {"search": r.params.get("search"), "recall_at_k": r.params.get("recall_at_k")}
                for r in rows if "scope" in r.params}
    figures: dict[str, object] = {"load_s": round(loaded, 2), "multilabel_with_intervals_s": round(total, 2),
                                  "peak_rss_mib": round(peak), "search": searches}
    started = time.perf_counter()
    analyze_run(run, AnalysisOptions(protocol="multilabel", bootstrap=0))
    figures["multilabel_no_intervals_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    analyze_run(run, AnalysisOptions(protocol="study", bootstrap=bootstrap))
    figures["study_with_intervals_s"] = round(time.perf_counter() - started, 2)
    test = run.splits == "test"
    baseline, how = study_way(run.vectors("test"), run.targets[test].argmax(1))
    figures |= {"test_split": int(test.sum()), "study_way_s": round(baseline, 2), "study_way": how,
                "ratio_study_way_over_load_plus_multilabel_no_intervals":
                    round(baseline / (loaded + float(figures["multilabel_no_intervals_s"])), 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3818, 300_000])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    parser.add_argument("--measure", nargs=2, metavar=("STORE", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.bootstrap, args.warm_up)))
        return
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            store, _ = Store.init(Path(folder) / "store")
            started = time.perf_counter()
            run_id = synthetic_run(store, n)
            built = time.perf_counter() - started
            child = subprocess.run([sys.executable, __file__, "--measure", str(store.path), run_id, "--bootstrap",
                                    str(args.bootstrap), *(["--warm-up"] if n == args.sizes[0] else [])],
                                   capture_output=True, text=True, check=False)
            if child.returncode != 0:
                sys.exit(f"size {n}: the measuring process failed:\n{child.stderr[-3000:]}")
            results.append({"n": n, "dim": 512, "bootstrap": args.bootstrap, "build_store_s": round(built, 1)}
                           | json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
