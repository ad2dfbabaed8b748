"""Analysis speed (figures in docs/benchmarks.md, "Analyses"): all analyses of one run from the
store, against the study's way run in the same process on the same vectors (scikit-learn
in-sample KNeighborsClassifier and exact silhouette on the analysed split).

A synthetic run (Gaussian clusters per label, IU-Xray-like prevalence, 70/15/15 split, 512-d) is
written straight into a temporary store with its FAISS index, then read back as `analyze` does.

Usage: .venv/bin/python bench/analyze.py [--sizes 3818 300000] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
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
from embedstore.vector_index import write_index


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


def study_way(x: np.ndarray, classes: np.ndarray) -> float:
    """The notebook's neighbour and cluster figures: in-sample 5-NN and exact silhouette."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    started = time.perf_counter()
    KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(x, classes).score(x, classes)
    silhouette_score(x, classes, metric="cosine")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3818, 300_000])
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    results = []
    for position, n in enumerate(args.sizes):
        with tempfile.TemporaryDirectory() as folder:
            store, _ = Store.init(Path(folder) / "store")
            run_id = synthetic_run(store, n)
            tracemalloc.start()
            started = time.perf_counter()
            run = load_run(store, run_id)
            loaded = time.perf_counter() - started
            timings = {"load_seconds": round(loaded, 3)}
            if position == 0:
                analyze_run(run, AnalysisOptions(protocol="study", bootstrap=2))  # warm-up: imports, thread pools
            for protocol in ("multilabel", "study"):
                for bootstrap in (0, args.bootstrap):
                    started = time.perf_counter()
                    analyze_run(run, AnalysisOptions(protocol=protocol, bootstrap=bootstrap))
                    timings[f"{protocol}_bootstrap{bootstrap}_seconds"] = round(time.perf_counter() - started, 3)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            test = run.splits == "test"
            baseline = study_way(run.embeddings[test], run.targets[test].argmax(1))
            ours = timings["load_seconds"] + timings["multilabel_bootstrap0_seconds"]
            results.append({"n": n, "test_split": int(test.sum()), **timings,
                            "study_way_knn_in_sample_plus_exact_silhouette_seconds": round(baseline, 3),
                            "ratio_study_way_over_load_plus_multilabel_analyses": round(baseline / ours, 2),
                            "python_peak_mib": round(peak / 2**20)})
            print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
