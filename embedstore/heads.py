"""Linear heads on frozen features (lp) and the fine-tuning recipes (ft), per protocol.

`study` reproduces the notebook exactly:
- head `Linear(d, L)` built after `torch.manual_seed(seed)` with PyTorch's default init, then
  `xavier_uniform_` on the weight only (the bias keeps its default uniform init);
- BCE-with-logits, batch 24, at most `epochs` epochs;
- early stopping on val BCE with patience 5 and min_delta 1e-4 (an epoch improves only when its
  loss < best − 1e-4), the best checkpoint kept and restored;
- val BCE = the mean over val batches (batch 24, in order) of each batch's mean BCE, as the
  notebook averages `loss.item()` over its val loader — not the per-element mean of the whole set;
- lp: encoder frozen (cached features), AdamW lr 1e-4 wd 1e-2, cosine schedule stepped once per
  epoch with T_max = the number of epochs asked for (the rate never rises again);
- ft, as the notebook actually runs it: the whole model trains from the first epoch, and a fresh
  AdamW (lr 1e-5, wd 1e-2) with a fresh cosine schedule (T_max = epochs) is built at the start of
  every epoch, so the rate stays 1e-5; training under the data's autocast (fp16 + GradScaler on
  CUDA), validation always in fp32.
`multilabel` fits an L2-regularised logistic head on normalised cached features (strength chosen on
val by the per-element mean val BCE), and fine-tunes with one warm-up epoch on the head, then one
optimizer and schedule; its head starts with a zero bias (a symmetric start; the warm-up epoch fits
it), and its val BCE is the exact per-element mean over the whole val set, under the training
autocast. Both protocols stop early with the same patience and min_delta.

Under `torchrun` (FineTuneData.ranks with several ranks) the recipes train one DistributedDataParallel
model and give the single process's result up to float rounding: the batch size stays global, each
rank reads its contiguous share of every global batch in the single process's order (`rank_batches`),
its loss is its share's known-pair BCE sum over the global batch's known-pair count (all-reduced) times
the world size, so DDP's gradient average is the gradient of the global batch's mean; val BCE sums are
all-reduced per val batch, and rank 0's val BCE decides early stopping on every rank. (An encoder with
BatchNorm normalises over each rank's share instead, and keeps rank 0's running statistics.)

Targets are 1/0, and NaN for a (sample, label) pair left out (`--uncertain ignore`: the label's
value was uncertain). Every loss gives such a pair weight 0 and averages over the known pairs only:
a batch's BCE is the sum of its known pairs' BCE over their count (a batch with no known pair adds
nothing), the per-element val BCE the sum over the whole val set's known pairs over their count,
the study's val BCE the mean over batches holding a known pair of each batch's known-pair mean, and
the logistic head's prior bias each label's share of positives among its known samples. Where every
pair is known these are exactly the plain means (the same calls, so results are bit-identical).
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from embedstore.choices import Protocol
from embedstore.distributed import Ranks, reduce_sum, share
from embedstore.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PATIENCE = 5
#: The smallest drop in val BCE that counts as an improvement (the notebook's early-stopping min_delta).
MIN_DELTA = 1e-4


#: The study's row scaling adds this to the span. It matters: without it every row's top label is
#: exactly 1.0, a tie across samples that moves per-label AUROC/AUPRC.
MINMAX_EPSILON = 1e-8


def row_minmax(scores: np.ndarray) -> np.ndarray:
    """The study's per-sample scaling `(s − min) / (max − min + 1e-8)`: each row into [0, 1); a
    constant row becomes 0."""
    scores = np.asarray(scores, dtype=np.float64)
    low = scores.min(axis=1, keepdims=True)
    return (scores - low) / (scores.max(axis=1, keepdims=True) - low + MINMAX_EPSILON)


@dataclass
class Head:
    """A linear head: logits = W · f(x) + b, with f = L2 normalisation when `normalize_input`."""

    weight: np.ndarray
    bias: np.ndarray
    normalize_input: bool

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = features.astype(np.float64)
        if self.normalize_input:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)

    def state(self) -> dict[str, Any]:
        return {"weight": self.weight, "bias": self.bias, "normalize_input": self.normalize_input}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Head:
        return cls(np.asarray(state["weight"]), np.asarray(state["bias"]), bool(state["normalize_input"]))

    @classmethod
    def from_module(cls, layer: torch.nn.Linear, normalize_input: bool = False) -> Head:
        return cls(layer.weight.detach().cpu().float().numpy().copy(), layer.bias.detach().cpu().float().numpy().copy(),
                   normalize_input)


@dataclass(frozen=True)
class FitResult:
    head: Head
    seconds: float
    epochs_run: int
    best_epoch: int
    val_loss: float
    detail: dict[str, Any]


def _xavier_head(dim: int, n_labels: int, zero_bias: bool = True) -> torch.nn.Linear:
    """`Linear(dim, n_labels)` with a Xavier-uniform weight. The study keeps the bias's PyTorch
    default init (`zero_bias=False`, the notebook's order: build, then Xavier on the weight)."""
    import torch

    head = torch.nn.Linear(dim, n_labels)
    torch.nn.init.xavier_uniform_(head.weight)
    if zero_bias:
        torch.nn.init.zeros_(head.bias)
    return head


def known_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the known pairs (targets not NaN): masked pairs weigh 0 and the sum
    of the known pairs' BCE is divided by their count (0 where none is known). With every pair known
    it is the plain mean, computed by the same call."""
    import torch.nn.functional as F

    known = ~targets.isnan()
    if bool(known.all()):
        return F.binary_cross_entropy_with_logits(logits, targets)
    losses = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), weight=known.to(logits.dtype),
                                                reduction="sum")
    return losses / known.sum().clamp(min=1)


def known_bce_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """(sum of BCE over the known pairs, their count): the parts of a per-element mean over many batches."""
    import torch.nn.functional as F

    known = ~targets.isnan()
    if bool(known.all()):
        return float(F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")), targets.numel()
    total = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), weight=known.to(logits.dtype),
                                               reduction="sum")
    return float(total), int(known.sum())


def _bce_batch_means(logits: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    """The study's val BCE: the mean over consecutive batches of `batch_size` of each batch's mean
    (over its known pairs; a batch without one is left out)."""
    losses = [float(known_bce(z, y)) for z, y in zip(logits.split(batch_size), targets.split(batch_size), strict=True)
              if not bool(y.isnan().all())]
    return sum(losses) / max(len(losses), 1)


class EarlyStopping:
    """Track val loss; keep the best state; stop after `patience` epochs without an improvement
    greater than `min_delta` (a smaller drop neither resets patience nor replaces the best state)."""

    def __init__(self, patience: int = PATIENCE, min_delta: float = MIN_DELTA) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.best_epoch = -1
        self.best_state: Any = None
        self.bad_epochs = 0

    def update(self, epoch: int, loss: float, state: Callable[[], Any]) -> bool:
        """Record an epoch's val loss; returns True when training should stop."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.best_state = loss, epoch, copy.deepcopy(state())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def fit_study_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   epochs: int = 10, batch_size: int = 24, seed: int = 42) -> FitResult:
    """The study's linear probe, on cached raw features instead of re-encoding every epoch; the
    cosine schedule spans the `epochs` asked for, val BCE is the mean of per-batch means."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(seed)
    head = _xavier_head(train_x.shape[1], train_y.shape[1], zero_bias=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    x, y = torch.from_numpy(train_x).float(), torch.from_numpy(train_y).float()
    vx, vy = torch.from_numpy(val_x).float(), torch.from_numpy(val_y).float()
    generator = torch.Generator().manual_seed(seed)
    stopper = EarlyStopping()
    rates: list[float] = []
    epoch = 0
    for epoch in range(epochs):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = known_bce(head(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        with torch.no_grad():
            val_loss = _bce_batch_means(head(vx), vy, batch_size)
        if stopper.update(epoch, val_loss, head.state_dict):
            break
    head.load_state_dict(stopper.best_state)
    return FitResult(Head.from_module(head), time.perf_counter() - started, epoch + 1, stopper.best_epoch,
                     stopper.best_loss, _study_detail(1e-4, epochs, rates, stopper, batch_size=batch_size))


def _study_detail(lr: float, epochs: int, rates: list[float], stopper: EarlyStopping, **more: Any) -> dict[str, Any]:
    """The study recipe's settings as the run's config records them (`lr_by_epoch`: each epoch's rate)."""
    return {"recipe": "study", "lr": lr, "weight_decay": 1e-2, "t_max": epochs,
            "lr_by_epoch": rates, "patience": stopper.patience, "min_delta": stopper.min_delta,
            "bias_init": "pytorch-default", "val_bce_averaging": "mean of per-batch means", **more}


LOGISTIC_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> FitResult:
    """Multi-label logistic regression on L2-normalised features, full-batch L-BFGS per L2 strength;
    the strength with the lowest val BCE wins."""
    import torch

    started = time.perf_counter()
    unit = lambda a: torch.nn.functional.normalize(torch.from_numpy(a).double(), dim=1)  # noqa: E731
    x, vx = unit(train_x), unit(val_x)
    y, vy = torch.from_numpy(train_y).double(), torch.from_numpy(val_y).double()
    fits = {}
    for penalty in LOGISTIC_PENALTIES:
        weight, bias = _lbfgs_logistic(x, y, penalty)
        with torch.no_grad():
            val_loss = float(known_bce(vx @ weight.T + bias, vy))
        fits[penalty] = (val_loss, weight.numpy().astype(np.float32), bias.numpy().astype(np.float32))
    chosen = min(fits, key=lambda penalty: fits[penalty][0])
    val_loss, best_weight, best_bias = fits[chosen]
    return FitResult(Head(best_weight, best_bias, normalize_input=True), time.perf_counter() - started, 1, 0, val_loss,
                     {"recipe": "logistic-lbfgs", "l2": chosen,
                      "val_bce_by_l2": {penalty: fit[0] for penalty, fit in fits.items()}})


def logistic_head(train_x: np.ndarray, train_y: np.ndarray, penalty: float) -> Head:
    """The multi-label logistic head of `fit_logistic_head` at one L2 strength (chosen elsewhere),
    fitted on all of `train_x` (NaN targets: pairs left out)."""
    import torch

    x = torch.nn.functional.normalize(torch.from_numpy(train_x).double(), dim=1)
    weight, bias = _lbfgs_logistic(x, torch.from_numpy(train_y).double(), penalty)
    return Head(weight.numpy().astype(np.float32), bias.numpy().astype(np.float32), normalize_input=True)


def _lbfgs_logistic(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch L-BFGS on BCE (mean over known pairs) + penalty/2 · |W|², bias started at the log
    prior odds (each label's positive share among its known samples; 1/2 for a label with none)."""
    import torch

    weight = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    prior = y.mean(0) if not bool(y.isnan().any()) else y.nanmean(0).nan_to_num(0.5)
    prior = prior.clamp(1e-4, 1 - 1e-4)
    bias = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = known_bce(x @ weight.T + bias, y) + penalty * (weight**2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


LP_RECIPES: dict[Protocol, Callable[..., FitResult]] = {
    Protocol.STUDY: fit_study_head,
    Protocol.MULTILABEL: lambda tx, ty, vx, vy, epochs, batch_size, seed: fit_logistic_head(tx, ty, vx, vy),
}


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------

@dataclass
class FineTuneData:
    """What a fine-tuning recipe needs: batches of normalised images with their targets.

    Under several ranks each call yields this rank's share of every global batch (`rank_batches`),
    one batch per global batch on every rank, and `batches_per_epoch` counts global batches."""

    train_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    val_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    device: torch.device
    autocast_dtype: torch.dtype | None
    batches_per_epoch: int
    #: this process's place in a torchrun job (a single process: rank 0 of 1)
    ranks: Ranks = field(default_factory=Ranks)


def global_batches(n: int, batch_size: int, shuffle: bool, seed: int) -> list[list[int]]:
    """The indices of every batch a single process reads (`images.batches`), in order. A shuffling
    DataLoader draws the same numbers from its seeded generator (its workers' base seed, then the
    permutation) whatever its worker count, so an index-only loader here gives the same order."""
    if not shuffle:
        return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    import torch
    from torch.utils.data import DataLoader

    loader: Any = DataLoader(range(n), batch_size=batch_size, shuffle=True,  # type: ignore[arg-type]
                             generator=torch.Generator().manual_seed(seed))
    return [batch.tolist() for batch in loader]


def rank_batches(n: int, batch_size: int, ranks: Ranks, shuffle: bool = False,
                 seed: int = 0) -> list[tuple[list[int], bool]]:
    """This rank's contiguous share of every global batch of `global_batches`, as (indices, stand_in).

    Shares differ in size by at most one, the first ranks taking the extra samples. A rank whose share
    of a short last batch is empty gets the batch's first sample as a stand-in (`stand_in` True): its
    data leaves every target of it out (NaN), so the rank still steps with the others (DDP needs every
    rank's backward) and adds nothing to any loss."""
    if batch_size < ranks.world_size:
        raise InputError(f"batch size {batch_size}: the global batch must hold one image per rank at least "
                         f"({ranks.world_size} ranks)", parameter="batch_size")
    shares = []
    for batch in global_batches(n, batch_size, shuffle, seed):
        size, extra = divmod(len(batch), ranks.world_size)
        start = ranks.rank * size + min(ranks.rank, extra)
        mine = batch[start:start + size + (ranks.rank < extra)]
        shares.append((mine, False) if mine else (batch[:1], True))
    return shares


def _autocast(data: FineTuneData) -> AbstractContextManager[Any]:
    import contextlib

    import torch

    if data.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=data.device.type, dtype=data.autocast_dtype)


def _precision(data: FineTuneData) -> str:
    """The name ("fp32", "bf16", "fp16") of the data's autocast precision."""
    from embedstore.images import AUTOCAST_DTYPES

    name = None if data.autocast_dtype is None else str(data.autocast_dtype).removeprefix("torch.")
    return {dtype: precision for precision, dtype in AUTOCAST_DTYPES.items()}[name]


def _val_loss(visual: torch.nn.Module, head: torch.nn.Module, data: FineTuneData, fp32: bool = False,
              batch_means: bool = False) -> float:
    """Val BCE: under the data's autocast unless `fp32`; the per-element mean over the whole val set,
    or with `batch_means` the mean over val batches of each batch's mean (the study's). Under several
    ranks every global val batch's known-pair sum and count are all-reduced, so every rank gets the
    single process's value."""
    import contextlib

    import torch

    visual.eval()
    total, count = 0.0, 0
    batch_losses: list[float] = []
    sums: list[float] = []
    counts: list[float] = []
    with torch.no_grad(), contextlib.nullcontext() if fp32 else _autocast(data):
        for images, targets in data.val_batches():
            logits = head(visual(images).float())
            batch_total, batch_count = known_bce_sum(logits, targets)
            if data.ranks.distributed:
                sums.append(batch_total)
                counts.append(batch_count)
                continue
            total += batch_total
            count += batch_count
            if batch_count:
                batch_losses.append(float(known_bce(logits, targets)))
    if data.ranks.distributed:
        reduced = reduce_sum(data.ranks, sums + counts)
        sums, counts = reduced[:len(sums)], reduced[len(sums):]
        total, count = sum(sums), int(sum(counts))
        batch_losses = [part / known for part, known in zip(sums, counts, strict=True) if known]
    if batch_means:
        return sum(batch_losses) / max(len(batch_losses), 1)
    return total / max(count, 1)


def _parallel(visual: torch.nn.Module, head: torch.nn.Module, data: FineTuneData) -> torch.nn.Module | None:
    """Under several ranks, visual and head as one DistributedDataParallel model (None otherwise).
    DDP registers the parameters that require grad when it is built: build it anew after changing
    which do (the old one is dropped first, so its hooks no longer fire)."""
    if not data.ranks.distributed:
        return None
    import torch

    class Tower(torch.nn.Module):
        """The recipes' forward pass, `head(visual(images).float())`, as one module."""

        def __init__(self) -> None:
            super().__init__()
            self.visual, self.head = visual, head

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(self.visual(images).float())

    return torch.nn.parallel.DistributedDataParallel(Tower())


def _rank_loss(logits: torch.Tensor, targets: torch.Tensor, ranks: Ranks) -> tuple[torch.Tensor, float, float]:
    """(this rank's loss, the global batch's mean BCE, its size). The loss is this share's known-pair
    BCE sum over the global batch's known-pair count, times the world size: DDP averages gradients
    over the ranks, which then gives exactly the gradient of the global batch's known-pair mean."""
    import torch.nn.functional as F

    known = ~targets.isnan()
    logits = logits.float()
    part = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), weight=known.to(logits.dtype),
                                              reduction="sum")
    total, count, size = reduce_sum(ranks, [float(part.detach()), float(known.sum()), float(len(targets))])
    return part * (ranks.world_size / max(count, 1.0)), total / max(count, 1.0), size


def _sync_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each rank's training steps update
    its own from its share, so without this the ranks would validate, and keep, different weights."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _train_epoch(visual: torch.nn.Module, head: torch.nn.Module, optimizer: torch.optim.Optimizer, data: FineTuneData,
                 epoch: int, step_schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                 scaler: torch.amp.GradScaler | None = None, model: torch.nn.Module | None = None) -> float:
    """One epoch of steps; under several ranks through `model` (the recipe's `_parallel` model).
    Returns the epoch's train BCE (batch means weighted by batch size), for the log."""
    if data.ranks.distributed and model is None:
        model = _parallel(visual, head, data)
    visual.train()
    total, count = 0.0, 0.0
    for images, targets in data.train_batches(epoch):
        with _autocast(data):
            logits = head(visual(images).float()) if model is None else model(images)
        if model is None:
            loss = known_bce(logits, targets)
            batch_loss, batch_size = float(loss.detach()), float(len(targets))
        else:
            loss, batch_loss, batch_size = _rank_loss(logits, targets, data.ranks)
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if step_schedule is not None:
            step_schedule.step()
        total += batch_loss * batch_size
        count += batch_size
    if model is not None:
        _sync_buffers(model, data.ranks)
    return total / max(count, 1)


def _states(visual: torch.nn.Module, head: torch.nn.Module) -> Callable[[], dict[str, Any]]:
    return lambda: {"visual": visual.state_dict(), "head": head.state_dict()}


def _best_fit(visual: torch.nn.Module, head: torch.nn.Linear, stopper: EarlyStopping, started: float, last_epoch: int,
              detail: dict[str, Any], ranks: Ranks) -> FitResult:
    """Restore the best checkpoint (lowest val BCE) and describe the fit (every rank: rank 0's time)."""
    visual.load_state_dict(stopper.best_state["visual"])
    head.load_state_dict(stopper.best_state["head"])
    seconds = share(ranks, time.perf_counter() - started)
    return FitResult(Head.from_module(head), seconds, last_epoch + 1, stopper.best_epoch, stopper.best_loss, detail)


def finetune_study(visual: torch.nn.Module, dim: int, n_labels: int, data: FineTuneData, epochs: int,
                   seed: int) -> FitResult:
    """The notebook's ft as it actually runs: the whole model trains from the first epoch, and a
    fresh AdamW (lr 1e-5, wd 1e-2) with a fresh cosine schedule (T_max = epochs) is built every
    epoch; training under the data's autocast (GradScaler on CUDA), validation in fp32."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(seed)
    head = _xavier_head(dim, n_labels, zero_bias=False).to(data.device)
    model = _parallel(visual, head, data)
    scaler = torch.amp.GradScaler("cuda") if data.device.type == "cuda" else None
    stopper = EarlyStopping()
    rates: list[float] = []
    epoch = 0
    for epoch in range(epochs):
        optimizer = torch.optim.AdamW([*visual.parameters(), *head.parameters()], lr=1e-5, weight_decay=1e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        rates.append(float(optimizer.param_groups[0]["lr"]))
        train_loss = _train_epoch(visual, head, optimizer, data, epoch, scaler=scaler, model=model)
        schedule.step()
        val_loss = share(data.ranks, _val_loss(visual, head, data, fp32=True, batch_means=True))
        log.info("ft (study) epoch %d: train BCE %.4f, val BCE %.4f", epoch + 1, train_loss, val_loss)
        if stopper.update(epoch, val_loss, _states(visual, head)):
            break
    detail = _study_detail(1e-5, epochs, rates, stopper, optimizer="AdamW rebuilt every epoch",
                           train_precision=_precision(data), val_precision="fp32")
    return _best_fit(visual, head, stopper, started, epoch, detail, data.ranks)


def finetune_multilabel(visual: torch.nn.Module, dim: int, n_labels: int, data: FineTuneData, epochs: int,
                        seed: int) -> FitResult:
    """The study recipe with its bugs fixed: one warm-up epoch on the head (encoder frozen), then
    unfreeze once; one AdamW (encoder 1e-5, head 1e-3) and one cosine schedule for the whole run."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(seed)
    head = _xavier_head(dim, n_labels).to(data.device)
    for parameter in visual.parameters():
        parameter.requires_grad_(False)
    model = _parallel(visual, head, data)
    warmup = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    _train_epoch(visual, head, warmup, data, 0, model=model)
    for parameter in visual.parameters():
        parameter.requires_grad_(True)
    if model is not None:  # the encoder's parameters now train: DDP must register them
        del model
        gc.collect()
        model = _parallel(visual, head, data)
    stopper = EarlyStopping()
    stopper.update(0, share(data.ranks, _val_loss(visual, head, data)), _states(visual, head))
    optimizer = torch.optim.AdamW([{"params": visual.parameters(), "lr": 1e-5},
                                   {"params": head.parameters(), "lr": 1e-3}], weight_decay=1e-2)
    steps = max(1, (epochs - 1) * data.batches_per_epoch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    epoch = 0
    for epoch in range(1, epochs):
        train_loss = _train_epoch(visual, head, optimizer, data, epoch, step_schedule=schedule, model=model)
        val_loss = share(data.ranks, _val_loss(visual, head, data))
        log.info("ft (multilabel) epoch %d: train BCE %.4f, val BCE %.4f", epoch + 1, train_loss, val_loss)
        if stopper.update(epoch, val_loss, _states(visual, head)):
            break
    return _best_fit(visual, head, stopper, started, epoch,
                     {"recipe": "multilabel", "warmup_epochs": 1, "lr_encoder": 1e-5, "lr_head": 1e-3,
                      "patience": stopper.patience, "min_delta": stopper.min_delta, "bias_init": "zero",
                      "val_bce_averaging": "per-element mean", "train_precision": _precision(data),
                      "val_precision": _precision(data)}, data.ranks)


FT_RECIPES: dict[Protocol, Callable[..., FitResult]] = {
    Protocol.STUDY: finetune_study,
    Protocol.MULTILABEL: finetune_multilabel,
}
