"""Extraction as a torchrun job (figures in docs/benchmarks.md, "Several processes"): images/s of
`embedstore extract --mode zs` with 1 rank (an ordinary process) and with 2 ranks
(`torchrun --standalone --nproc_per_node 2`, gloo), on the same store, dataset, model and warm
tensor cache, and the scaling efficiency (2-rank images/s ÷ (2 × 1-rank images/s)). Each rank gets
cores ÷ ranks threads. Also checks that the two runs' embeddings agree.

The encoding seconds are the ranks' own (`runs.config.distributed.ranks[*].seconds`: model loaded,
images encoded and staged); the wall-clock of each command, start-up included, is printed too.

Usage: .venv/bin/python bench/distributed.py [--n 3000] [--model demo] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedstore.ingest import IngestConfig, ingest
from embedstore.store import Store
from embedstore.synthetic import SampleConfig, write_sample


def _extract(store: Store, model: str, ranks: int, threads: int) -> tuple[float, dict[str, object]]:
    args = ["extract", "--mode", "zs", "--model", model, "--data", "syn", "--store", str(store.path), "--workers", "1",
            "--chunk-size", "128"]
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                "-m", "embedstore", *args] if ranks > 1 else [sys.executable, "-m", "embedstore", *args])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    with store.reader() as con:
        row = con.execute("SELECT config, extract_seconds FROM runs WHERE mode = 'zs'").fetchone()
    config = json.loads(row[0])
    return wall, {"extract_seconds": row[1], "distributed": config.get("distributed")}


def _embeddings(store: Store) -> np.ndarray:
    with store.reader() as con:
        rows = con.execute("SELECT embedding FROM image_embeddings ORDER BY sample_id").fetchall()
    return np.array([r[0] for r in rows], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        os.environ.setdefault("EMBEDSTORE_CACHE", str(out / "cache"))
        data = out / "data"
        write_sample(SampleConfig(out=data, n=args.n, seed=11, size=256))
        stores = {}
        for name in ("warm", "one", "two"):
            stores[name], _ = Store.init(out / name)
            ingest(stores[name], IngestConfig(path=data, name="syn"))
        _extract(stores["warm"], args.model, 1, cores)  # fills the tensor cache: both timed runs read it warm
        report: dict[str, object] = {"cores": cores, "images": args.n}
        for name, ranks in (("one", 1), ("two", 2)):
            wall, detail = _extract(stores[name], args.model, ranks, max(1, cores // ranks))
            report[f"{ranks}_rank"] = {"wall_seconds": round(wall, 2), **detail}
        one_seconds = float(report["1_rank"]["extract_seconds"])  # type: ignore[index]
        ranks_two = report["2_rank"]["distributed"]["ranks"]  # type: ignore[index]
        two_seconds = max(float(rank["seconds"]) for rank in ranks_two)
        one_rate, two_rate = args.n / one_seconds, args.n / two_seconds
        report["images_per_s"] = {"1_rank": round(one_rate, 1), "2_ranks": round(two_rate, 1)}
        report["scaling_efficiency"] = round(two_rate / (2 * one_rate), 3)
        report["max_abs_embedding_difference"] = float(np.abs(_embeddings(stores["one"]) -
                                                              _embeddings(stores["two"])).max())
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
