"""Fine-tuning under torchrun (DistributedDataParallel, gloo on CPU) gives the single process's result:
the global batch order and each rank's share of it, the loss normalised over the global batch's known
pairs, val BCE reduced over the ranks, and identical weights on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from embedstore.atomic import save_npy
from embedstore.choices import Protocol
from embedstore.distributed import Ranks
from embedstore.errors import InputError
from embedstore.extract import _finetune_data
from embedstore.heads import global_batches, rank_batches
from embedstore.images import CachedImages, ImageItem, TensorCache, batches
from tests.distributed_ft_job import CASES, initial_weights, run_all

JOB = Path(__file__).with_name("distributed_ft_job.py")


# ---------------------------------------------------------------------------------------------
# The global batch order and each rank's share
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_global_batches_are_the_single_process_loader_order(tmp_path: Path, workers: int) -> None:
    cache = TensorCache(tmp_path, "key")
    items = [ImageItem(100 + i, f"never-read-{i}.png", f"{i:064x}") for i in range(23)]
    for item in items:
        save_npy(cache.folder / item.sha256[:2] / f"{item.sha256}.npy", np.zeros((1, 2, 2), dtype=np.uint8))
    dataset = CachedImages(items, cache, lambda image: torch.zeros(1))
    for shuffle, seed in ((True, 42), (True, 43), (False, 0)):
        loaded = [[int(s) - 100 for s in ids] for ids, _ in batches(dataset, 6, workers, shuffle=shuffle, seed=seed)]
        assert global_batches(23, 6, shuffle, seed) == loaded


@pytest.mark.parametrize(("n", "batch", "world"), [(23, 6, 2), (19, 6, 2), (20, 5, 3), (7, 3, 3), (5, 8, 1)])
def test_rank_shares_are_contiguous_and_cover_every_global_batch(n: int, batch: int, world: int) -> None:
    shares = [rank_batches(n, batch, Ranks(rank, world), shuffle=True, seed=3) for rank in range(world)]
    for k, whole in enumerate(global_batches(n, batch, True, 3)):
        parts = [shares[rank][k] for rank in range(world)]
        real = [indices for indices, stand_in in parts if not stand_in]
        assert sum(real, []) == whole                              # contiguous, in rank order, each sample once
        assert max(map(len, real)) - min(len(p) for p, _ in parts if p) <= 1
        for indices, stand_in in parts:
            assert not stand_in or (indices == whole[:1] and len(whole) < world)


def test_a_global_batch_smaller_than_the_ranks_is_refused() -> None:
    with pytest.raises(InputError, match=r"^batch size 2: the global batch must hold one image per rank at least "
                                         r"\(3 ranks\)$") as raised:
        rank_batches(10, 2, Ranks(0, 3))
    assert raised.value.parameter == "batch_size"


def _context(tmp_path: Path, ranks: Ranks, n_train: int = 23, n_val: int = 13) -> Any:
    """What `extract._finetune_data` reads of a run: cached uint8 images, splits, targets (some left out)."""
    rng = np.random.default_rng(0)
    cache = TensorCache(tmp_path, "key")
    items = [ImageItem(500 + i, f"never-read-{i}.png", f"{i:064x}") for i in range(n_train + n_val)]
    for item in items:
        save_npy(cache.folder / item.sha256[:2] / f"{item.sha256}.npy", rng.integers(0, 256, (3, 2, 2), dtype=np.uint8))
    targets = rng.integers(0, 2, (len(items), 3)).astype(np.float32)
    targets[rng.random(targets.shape) < 0.25] = np.nan
    config = SimpleNamespace(batch_size=6, workers=1, seed=42, data="synthetic", protocol=Protocol.STUDY)
    model = SimpleNamespace(pixel_transform=None, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    return SimpleNamespace(items=items, splits=np.array(["train"] * n_train + ["val"] * n_val), cache=cache,
                           model=model, config=config, device=torch.device("cpu"), ranks=ranks,
                           fit_targets=lambda: targets)


def test_extract_feeds_each_rank_its_share_of_the_single_process_batches(tmp_path: Path) -> None:
    single = _finetune_data(_context(tmp_path, Ranks()))
    ranks = [_finetune_data(_context(tmp_path, Ranks(rank, 2))) for rank in range(2)]
    assert [data.ranks for data in ranks] == [Ranks(0, 2), Ranks(1, 2)]
    assert ranks[0].batches_per_epoch == single.batches_per_epoch == 4
    for epoch in (0, 1):
        for whole, *parts in zip(single.train_batches(epoch), *(data.train_batches(epoch) for data in ranks),
                                 strict=True):
            for k in (0, 1):  # images, targets
                torch.testing.assert_close(torch.cat([part[k] for part in parts]), whole[k], rtol=0, atol=0,
                                           equal_nan=True)
    *_, (last, last0, last1) = zip(single.val_batches(), *(data.val_batches() for data in ranks), strict=True)
    assert len(last[0]) == 1 and len(last0[0]) == 1 and len(last1[0]) == 1
    assert torch.equal(last0[0], last[0]) and torch.equal(last1[0], last[0])   # rank 1's stand-in: the same image
    assert torch.equal(last0[1].isnan(), last[1].isnan()) and bool(last1[1].isnan().all())  # …every target left out


# ---------------------------------------------------------------------------------------------
# Both recipes, one process against two ranks
# ---------------------------------------------------------------------------------------------

def _torchrun(out: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(JOB), str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
def test_two_ranks_train_as_one_process(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs
    try:
        single = run_all(Ranks())
    finally:
        torch.set_num_threads(threads)
    rank0, rank1 = _torchrun(tmp_path)
    assert rank0 == rank1                                           # identical weights and FitResults on every rank
    runs = {f"{case}/{run}" for case in CASES for run in ("sgd", "study", "multilabel")}
    assert set(rank0) == set(single) == runs | {"batch-norm/study"}
    start = initial_weights()
    for key in sorted(runs):
        expected, got = single[key], rank0[key]
        for part in ("head", "visual"):
            want, have, initial = (np.array(values[part]) for values in (expected, got, start[key.split("/")[1]]))
            difference = float(np.abs(have - want).max())
            print(f"{key} {part}: max abs difference {difference:.3g} (largest update {np.abs(want - initial).max():.3g})")
            assert difference <= 1e-4, f"{key} {part}"
            # AdamW's first steps are about lr × the gradient's sign: a gradient wrong only in part
            # moves the weights by a fraction of their update, which this catches.
            assert difference <= 1e-3 * np.abs(want - initial).max(), f"{key} {part}"
        if "val_loss" in expected:
            assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
            assert (got["best_epoch"], got["epochs_run"]) == (expected["best_epoch"], expected["epochs_run"])
