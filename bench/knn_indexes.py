"""Which FAISS index for approximate neighbour search (figures in docs/benchmarks.md, "Analyses"):
the cost of reaching recall@10 >= 0.95 against exact search, on the synthetic embeddings of
bench/analyze.py (300,000-sample run: 45,000 test queries against the 210,000-vector train pool,
512-d), on this machine's cores. Exact search is FAISS's BLAS inner product; the candidates are
IVF-flat, HNSW and IVF-PQ fast scan with re-ranking (what `analyze` uses beyond 10^9 pairs).
Search times are measured on 2,000 queries and scaled to 45,000.

Usage: .venv/bin/python bench/knn_indexes.py [--pool 210000] [--queries 45000]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
from analyze import LATENT_DIM

from embedstore.labels import CHEXPERT_LABELS
from embedstore.synthetic import IUXRAY_COUNTS, IUXRAY_FRONTAL

SAMPLED_QUERIES = 2000


def embeddings(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """Unit vectors drawn as bench/analyze.py draws a run's embeddings."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([IUXRAY_COUNTS[label] / IUXRAY_FRONTAL for label in CHEXPERT_LABELS])
    directions = rng.normal(size=(len(prevalence), LATENT_DIM))
    lift = rng.normal(size=(LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)
    targets = (rng.random((n, len(prevalence))) < prevalence).astype(float)
    x = ((rng.normal(size=(n, LATENT_DIM)) + targets @ directions) @ lift
         + 0.1 * rng.normal(size=(n, dim))).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=210_000)
    parser.add_argument("--queries", type=int, default=45_000)
    args = parser.parse_args()
    x = embeddings(args.pool + SAMPLED_QUERIES)
    pool, queries = x[:args.pool], x[args.pool:]
    scale = args.queries / SAMPLED_QUERIES
    started = time.perf_counter()
    _, exact = faiss.knn(queries, pool, 10, metric=faiss.METRIC_INNER_PRODUCT)
    print(json.dumps({"index": "exact (BLAS)", "search_s": round((time.perf_counter() - started) * scale, 1)}))

    def report(name: str, build: float, setting: str, found: np.ndarray, seconds: float) -> None:
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
        print(json.dumps({"index": name, "build_s": round(build, 1), "setting": setting,
                          "recall_at_10": round(float(recall), 4), "search_s": round(seconds * scale, 1)}), flush=True)

    nlist = int(2 * np.sqrt(args.pool))
    variants = {
        "IVF-flat": lambda: faiss.IndexIVFFlat(faiss.IndexFlatIP(512), 512, nlist, faiss.METRIC_INNER_PRODUCT),
        "IVF-PQ fast scan + float16 re-ranking": lambda: faiss.IndexRefine(
            faiss.index_factory(512, f"IVF{nlist},PQ128x4fs", faiss.METRIC_INNER_PRODUCT),
            faiss.IndexScalarQuantizer(512, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)),
    }
    for name, make in variants.items():
        index = make()
        started = time.perf_counter()
        index.train(pool[np.random.default_rng(0).choice(args.pool, min(args.pool, 40 * nlist), replace=False)])
        index.add(pool)
        build = time.perf_counter() - started
        for nprobe in (16, 32, 64, 128):
            if name == "IVF-flat":
                params: faiss.SearchParameters = faiss.SearchParametersIVF(nprobe=nprobe)
                setting = f"nprobe {nprobe}"
            else:
                params = faiss.IndexRefineSearchParameters(k_factor=40, base_index_params=faiss.SearchParametersIVF(
                    nprobe=nprobe))
                setting = f"nprobe {nprobe}, re-rank 40x"
            started = time.perf_counter()
            _, found = index.search(queries, 10, params=params)
            report(name, build, setting, found, time.perf_counter() - started)
    for m in (16, 32):
        index = faiss.IndexHNSWFlat(512, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        started = time.perf_counter()
        index.add(pool)
        build = time.perf_counter() - started
        for ef in (64, 128, 256):
            index.hnsw.efSearch = ef
            started = time.perf_counter()
            _, found = index.search(queries, 10)
            report("HNSW (nondeterministic when built on several threads)", build, f"M {m}, efSearch {ef}", found,
                   time.perf_counter() - started)


if __name__ == "__main__":
    main()
