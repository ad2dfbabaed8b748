"""The study's lp/ft recipe details, checked against the notebook's formulas written plainly here:
head init (Xavier weight, PyTorch's default bias), early stopping with min_delta 1e-4, val BCE as
the mean of per-batch means, cosine T_max = the epochs asked for, fp32 validation; and the
encoding / training precision per protocol and device, recorded in the run's config."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import embedstore.heads as heads
from embedstore.extract import ExtractConfig, extract
from embedstore.heads import EarlyStopping, FineTuneData, finetune_study, fit_study_head
from embedstore.images import encode_autocast, encode_precision, ft_train_precision
from embedstore.store import Store

BATCH = 24


def _bce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean BCE-with-logits, the numerically stable formula, in float64."""
    z, y = logits.astype(np.float64), targets.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def _mean_of_batch_means(logits: np.ndarray, targets: np.ndarray, batch: int = BATCH) -> float:
    """The notebook's val loss: `loss.item()` summed over val batches, divided by their number."""
    starts = range(0, len(logits), batch)
    return float(np.mean([_bce(logits[s:s + batch], targets[s:s + batch]) for s in starts]))


def _data(n: int, d: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets from a noisy linear rule (so a head keeps learning for many epochs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=(d, n_labels)) + rng.normal(size=(n, n_labels)) > 0).astype(np.float32)
    return x, y


def _reference_head(dim: int, n_labels: int, seed: int) -> torch.nn.Linear:
    """The notebook: seed, build Linear (default init of weight and bias), then Xavier on the weight."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(dim, n_labels)
    torch.nn.init.xavier_uniform_(head.weight)
    return head


class _AdamWSpy:
    """Records the parameters (as they are at construction) and the optimizer of every AdamW built."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.initial: list[list[torch.Tensor]] = []
        self.optimizers: list[Any] = []
        real = torch.optim.AdamW

        def build(params: Any, *args: Any, **kwargs: Any) -> Any:
            params = list(params)
            self.initial.append([p.detach().clone() for p in params])
            optimizer = real(params, *args, **kwargs)
            self.optimizers.append(optimizer)
            return optimizer

        monkeypatch.setattr(torch.optim, "AdamW", build)


# ---------------------------------------------------------------------------------------------
# Head initialisation
# ---------------------------------------------------------------------------------------------

def test_study_lp_head_keeps_pytorch_default_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _AdamWSpy(monkeypatch)
    x, y = _data(48, 8, 3, seed=1)
    fit_study_head(x, y, x[:30], y[:30], epochs=1, seed=5)
    weight, bias = spy.initial[0]
    reference = _reference_head(8, 3, seed=5)
    assert not torch.all(bias == 0)
    assert torch.equal(weight, reference.weight.detach()) and torch.equal(bias, reference.bias.detach())


def test_study_ft_head_keeps_pytorch_default_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _AdamWSpy(monkeypatch)
    visual, data = _ft_setup(n_val=30, autocast_dtype=None)
    finetune_study(visual, 8, 3, data, epochs=1, seed=5)
    *_, weight, bias = spy.initial[0]          # [*visual.parameters(), *head.parameters()]
    reference = _reference_head(8, 3, seed=5)
    assert not torch.all(bias == 0)
    assert torch.equal(weight, reference.weight.detach()) and torch.equal(bias, reference.bias.detach())


# ---------------------------------------------------------------------------------------------
# Early stopping
# ---------------------------------------------------------------------------------------------

def test_an_improvement_below_min_delta_does_not_reset_patience() -> None:
    stopper = EarlyStopping()
    assert not stopper.update(0, 1.0, lambda: "epoch 0")
    stops = [stopper.update(epoch, 1.0 - 5e-5, lambda: "later") for epoch in range(1, 6)]
    assert stops == [False, False, False, False, True]        # five epochs 5e-5 below the best: patience spent
    assert stopper.best_epoch == 0 and stopper.best_loss == 1.0 and stopper.best_state == "epoch 0"


def test_an_improvement_above_min_delta_resets_patience() -> None:
    stopper = EarlyStopping()
    stopper.update(0, 1.0, lambda: 0)
    for epoch in range(1, 5):
        stopper.update(epoch, 1.0 - 5e-5, lambda: "not an improvement")
    assert not stopper.update(5, 1.0 - 2e-4, lambda: 5)
    assert stopper.best_epoch == 5 and stopper.bad_epochs == 0


def test_study_lp_records_its_stopping_rule() -> None:
    x, y = _data(48, 8, 3, seed=1)
    detail = fit_study_head(x, y, x[:30], y[:30], epochs=1).detail
    assert detail["patience"] == 5 and detail["min_delta"] == 1e-4


# ---------------------------------------------------------------------------------------------
# Val BCE: the mean of per-batch means
# ---------------------------------------------------------------------------------------------

def test_study_lp_val_loss_is_the_mean_of_per_batch_means() -> None:
    x, y = _data(96, 8, 3, seed=2)
    vx, vy = _data(30, 8, 3, seed=3)                          # 24 + 6: not a multiple of the batch
    fit = fit_study_head(x, y, vx, vy, epochs=3, batch_size=BATCH, seed=0)
    logits = vx.astype(np.float64) @ fit.head.weight.T.astype(np.float64) + fit.head.bias
    expected = _mean_of_batch_means(logits, vy)
    assert abs(expected - _bce(logits, vy)) > 1e-4          # the two definitions differ on this set
    assert fit.val_loss == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Cosine schedule: T_max = the epochs asked for
# ---------------------------------------------------------------------------------------------

def test_study_lp_learning_rate_never_rises_with_more_than_ten_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _AdamWSpy(monkeypatch)
    seen: list[float] = []
    real_update = EarlyStopping.update

    def update(self: EarlyStopping, epoch: int, loss: float, state: Any) -> bool:
        seen.append(spy.optimizers[0].param_groups[0]["lr"])  # after this epoch's schedule step
        return real_update(self, epoch, loss, state)

    monkeypatch.setattr(heads.EarlyStopping, "update", update)
    x, y = _data(480, 16, 3, seed=4)                          # val = train: the loss keeps falling
    fit = fit_study_head(x, y, x, y, epochs=30, seed=0)
    assert fit.epochs_run > 11, "the fit must run past epoch 10 for this check to mean anything"
    assert all(later <= earlier for earlier, later in zip(seen, seen[1:], strict=False))
    expected = [1e-4 * (1 + math.cos(math.pi * epoch / 30)) / 2 for epoch in range(fit.epochs_run)]
    assert fit.detail["lr_by_epoch"] == pytest.approx(expected, rel=1e-9)
    assert fit.detail["t_max"] == 30


# ---------------------------------------------------------------------------------------------
# ft: validation in fp32, mean of per-batch means
# ---------------------------------------------------------------------------------------------

class _Tower(torch.nn.Module):
    """A stand-in image tower: flatten a 3×2×2 'image' and project it to 8 dimensions."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(12, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images.flatten(1))


def _ft_setup(n_val: int, autocast_dtype: Any, n_train: int = 48) -> tuple[_Tower, FineTuneData]:
    torch.manual_seed(0)
    visual = _Tower()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n_train + n_val, 3, 2, 2, generator=generator)
    targets = (torch.rand(n_train + n_val, 3, generator=generator) > 0.5).float()
    train, val = slice(0, n_train), slice(n_train, n_train + n_val)

    def batches(part: slice) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = images[part], targets[part]
        for start in range(0, len(x), BATCH):
            yield x[start:start + BATCH], y[start:start + BATCH]

    return visual, FineTuneData(train_batches=lambda epoch: batches(train), val_batches=lambda: batches(val),
                                device=torch.device("cpu"), autocast_dtype=autocast_dtype,
                                batches_per_epoch=math.ceil(n_train / BATCH))


def _ft_val_reference(visual: _Tower, fit: heads.FitResult, data: FineTuneData) -> tuple[float, float]:
    """(mean of per-batch means, per-element mean) of the restored model's val BCE, in float64."""
    visual.eval()
    logits, targets = [], []
    with torch.no_grad():
        for images, y in data.val_batches():
            logits.append(fit.head.logits(visual.double()(images.double()).numpy()))
            targets.append(y.numpy())
    visual.float()
    per_batch = float(np.mean([_bce(z, y) for z, y in zip(logits, targets, strict=True)]))
    return per_batch, _bce(np.concatenate(logits), np.concatenate(targets))


def test_study_ft_val_loss_is_the_mean_of_per_batch_means() -> None:
    visual, data = _ft_setup(n_val=30, autocast_dtype=None)
    fit = finetune_study(visual, 8, 3, data, epochs=2, seed=0)
    per_batch, per_element = _ft_val_reference(visual, fit, data)
    assert abs(per_batch - per_element) > 1e-4
    assert fit.val_loss == pytest.approx(per_batch, rel=1e-6)


def test_study_ft_validates_in_fp32_even_when_training_uses_autocast() -> None:
    visual, data = _ft_setup(n_val=48, autocast_dtype=torch.bfloat16)
    fit = finetune_study(visual, 8, 3, data, epochs=2, seed=0)
    per_batch, _ = _ft_val_reference(visual, fit, data)
    assert fit.val_loss == pytest.approx(per_batch, rel=1e-6)
    assert fit.detail["val_precision"] == "fp32" and fit.detail["train_precision"] == "bf16"


def test_study_ft_rate_stays_at_its_start_every_epoch() -> None:
    visual, data = _ft_setup(n_val=30, autocast_dtype=None)
    fit = finetune_study(visual, 8, 3, data, epochs=3, seed=0)
    assert fit.detail["lr_by_epoch"] == [1e-5] * fit.epochs_run and fit.detail["t_max"] == 3


# ---------------------------------------------------------------------------------------------
# Precision per protocol and device
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("protocol", "device_type", "encode", "train"), [
    ("study", "cuda", "fp32", "fp16"),
    ("study", "cpu", "fp32", "fp32"),
    ("multilabel", "cuda", "bf16", "bf16"),
    ("multilabel", "cpu", "fp32", "fp32"),
])
def test_precision_per_protocol_and_device(protocol: str, device_type: str, encode: str, train: str) -> None:
    assert encode_precision(protocol, device_type) == encode
    assert ft_train_precision(protocol, device_type) == train
    dtype = encode_autocast(torch.device(device_type), protocol)   # a CUDA device object needs no GPU
    assert dtype == {"fp32": None, "bf16": torch.bfloat16}[encode]


def _config(store: Store, run_id: str) -> dict[str, Any]:
    with store.reader() as con:
        return json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0])


def test_cpu_runs_record_fp32_in_their_config(synthetic_store: Store, native_model: str) -> None:
    options: dict[str, Any] = {"model": native_model, "data": "syn", "epochs": 1, "encode_batch_size": 32}
    zs = extract(synthetic_store, ExtractConfig(mode="zs", protocol="study", **options))
    assert _config(synthetic_store, zs.run_id)["encode_precision"] == "fp32"
    ft = extract(synthetic_store, ExtractConfig(mode="ft", protocol="study", **options))
    config = _config(synthetic_store, ft.run_id)
    assert config["encode_precision"] == "fp32" and config["ft_train_precision"] == "fp32"
    assert config["fit"]["val_precision"] == "fp32"


def test_lp_reuses_only_embeddings_encoded_at_its_own_precision(synthetic_store: Store, native_model: str) -> None:
    options: dict[str, Any] = {"model": native_model, "data": "syn", "epochs": 1, "encode_batch_size": 32}
    zs = extract(synthetic_store, ExtractConfig(mode="zs", protocol="multilabel", **options))
    with synthetic_store.writer("test") as writer, writer.transaction() as con:   # as if encoded on a GPU
        con.execute("UPDATE runs SET config = json_merge_patch(config, '{\"encode_precision\": \"bf16\"}') "
                    "WHERE run_id = ?", [zs.run_id])
    lp = extract(synthetic_store, ExtractConfig(mode="lp", protocol="study", **options))
    assert lp.embeddings_from is None
