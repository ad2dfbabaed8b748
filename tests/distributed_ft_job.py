"""One rank of tests/test_distributed_ft.py's torchrun job, or the single process it is compared with.

Runs, on a tiny image tower and synthetic images with some targets left out (NaN): one epoch of plain
SGD through the recipes' epoch loop (SGD, unlike AdamW, shows a wrong gradient scale), the study
recipe for 1 epoch and the multilabel recipe for 2 (warm-up, then one epoch with the encoder
unfrozen), per data case; and, on a tower with BatchNorm, the study recipe for 2 epochs. Writes this
rank's weights and results as JSON.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_ft_job.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from embedstore import heads
from embedstore.distributed import Ranks, joined

DIM, LABELS, SEED = 8, 3, 7
#: (train samples, val samples, global batch): 23 = 3×6 + 5 splits the last train batch 3/2 and
#: 13 = 2×6 + 1 leaves rank 1 a stand-in in the last val batch; 19 = 3×6 + 1 does that in training.
CASES = {"uneven": (23, 13, 6), "stand-in": (19, 11, 6)}


class TinyTower(torch.nn.Module):
    """A stand-in image tower with a ViT's pieces: patch conv, LayerNorm, residual GELU MLP, mean pool."""

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 12, kernel_size=4, stride=4)
        self.batch_norm = torch.nn.BatchNorm2d(12) if batch_norm else torch.nn.Identity()
        self.norm = torch.nn.LayerNorm(12)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.GELU(), torch.nn.Linear(24, 12))
        self.proj = torch.nn.Linear(12, DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.batch_norm(self.patch(images)).flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.proj(tokens.mean(1))


def tower(batch_norm: bool = False) -> TinyTower:
    torch.manual_seed(SEED)
    return TinyTower(batch_norm)


def make_data(ranks: Ranks, n_train: int, n_val: int, batch: int) -> heads.FineTuneData:
    """Synthetic 8×8 images, targets from a noisy rule with a quarter of the pairs (and one whole sample)
    left out; each rank reads its share of every global batch (`heads.rank_batches`), as extract does."""
    generator = torch.Generator().manual_seed(SEED)
    n = n_train + n_val
    images = torch.randn(n, 3, 8, 8, generator=generator)
    rule = images.flatten(1) @ torch.randn(3 * 64, LABELS, generator=generator)
    targets = (rule + torch.randn(n, LABELS, generator=generator) > 0).float()
    targets[torch.rand(n, LABELS, generator=generator) < 0.25] = float("nan")
    targets[2] = float("nan")
    parts = {"train": (images[:n_train], targets[:n_train]), "val": (images[n_train:], targets[n_train:])}

    def generate(part: str, shuffle: bool, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = parts[part]
        for indices, stand_in in heads.rank_batches(len(x), batch, ranks, shuffle, seed):
            yield x[indices], torch.full_like(y[indices], float("nan")) if stand_in else y[indices]

    return heads.FineTuneData(train_batches=lambda epoch: generate("train", True, SEED + epoch),
                              val_batches=lambda: generate("val", False, 0), device=torch.device("cpu"),
                              autocast_dtype=None, batches_per_epoch=-(-n_train // batch), ranks=ranks)


def _weights(visual: torch.nn.Module, head: torch.nn.Module | heads.Head) -> dict[str, Any]:
    vector = torch.cat([value.detach().flatten().double() for value in visual.state_dict().values()])
    if isinstance(head, heads.Head):
        head_vector = [*head.weight.flatten().tolist(), *head.bias.flatten().tolist()]
    else:
        head_vector = torch.cat([p.detach().flatten().double() for p in head.parameters()]).tolist()
    return {"head": head_vector, "visual": vector.tolist(),
            "visual_sha256": hashlib.sha256(vector.float().numpy().tobytes()).hexdigest()}


def initial_weights() -> dict[str, dict[str, Any]]:
    """The weights every run starts from (the recipes' heads as they build them), to size the updates."""
    torch.manual_seed(SEED)
    linear = torch.nn.Linear(DIM, LABELS)
    torch.manual_seed(SEED)
    study = heads._xavier_head(DIM, LABELS, zero_bias=False)
    torch.manual_seed(SEED)
    multilabel = heads._xavier_head(DIM, LABELS)
    return {"sgd": _weights(tower(), linear), "study": _weights(tower(), study),
            "multilabel": _weights(tower(), multilabel)}


def run_all(ranks: Ranks) -> dict[str, Any]:
    """Every (case, run)'s weights and results on this rank: runs "sgd", "study" and "multilabel"."""
    results: dict[str, Any] = {}
    for case, sizes in CASES.items():
        data = make_data(ranks, *sizes)
        visual = tower()
        torch.manual_seed(SEED)
        head = torch.nn.Linear(DIM, LABELS)
        optimizer = torch.optim.SGD([*visual.parameters(), *head.parameters()], lr=0.5)
        heads._train_epoch(visual, head, optimizer, data, 0, model=heads._parallel(visual, head, data))
        results[f"{case}/sgd"] = _weights(visual, head)
        for name, recipe, epochs in (("study", heads.finetune_study, 1), ("multilabel", heads.finetune_multilabel, 2)):
            visual = tower()
            fit = recipe(visual, DIM, LABELS, data, epochs=epochs, seed=SEED)
            results[f"{case}/{name}"] = _weights(visual, fit.head) | {
                "val_loss": fit.val_loss, "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
                "seconds": fit.seconds}
    # BatchNorm normalises over each rank's share (no single-process twin), but the ranks must still agree.
    visual = tower(batch_norm=True)
    fit = heads.finetune_study(visual, DIM, LABELS, make_data(ranks, *CASES["uneven"]), epochs=2, seed=SEED)
    results["batch-norm/study"] = _weights(visual, fit.head) | {"val_loss": fit.val_loss}
    return results


def main(out: Path) -> None:
    ranks = Ranks.from_environment()
    torch.set_num_threads(1)
    with joined(ranks, "cpu"):
        results = run_all(ranks)
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
