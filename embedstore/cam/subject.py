"""The subject of a map: a stored run rebuilt into the module whose output the map explains.

Every run's scorer is a linear head on the image embedding: zs runs the protocol's zero-shot head
built from the run's stored text embeddings (raw dot product under the study protocol, cosine ×
logit scale under multilabel), lp the stored head, ft the stored head on the fine-tuned tower. So
the Grad-CAM target for a label is exactly the score the run stored for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from embedstore import queries
from embedstore.choices import Mode, Protocol
from embedstore.errors import InputError, IntegrityError
from embedstore.heads import Head, row_minmax
from embedstore.integrity import load_arrays, load_tensors
from embedstore.models import LoadedModel, load_model
from embedstore.prompts import has_negatives
from embedstore.store import Store

if TYPE_CHECKING:
    import torch


def head_model(visual: torch.nn.Module, head: Head) -> torch.nn.Module:
    """The image tower followed by a linear head: its outputs are the run's scores."""
    import torch

    class WithHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual
            self.head = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
            with torch.no_grad():
                self.head.weight.copy_(torch.from_numpy(np.asarray(head.weight, dtype=np.float32)))
                self.head.bias.copy_(torch.from_numpy(np.asarray(head.bias, dtype=np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.visual(x)
            if head.normalize_input:
                features = torch.nn.functional.normalize(features, dim=-1)
            return self.head(features)

    return WithHead().eval()


@dataclass
class CamSubject:
    """A stored run made runnable again: its model, its scorer as a module, its labels."""

    run_id: str
    mode: str
    protocol: str
    prompt_set: str | None
    dataset_id: str
    labels: list[str]
    loaded: LoadedModel
    module: torch.nn.Module
    config: dict[str, Any]

    @property
    def visual(self) -> torch.nn.Module:
        """The image tower inside the scorer (the module maps are hooked on)."""
        return cast("torch.nn.Module", self.module.visual)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Scores (n × labels) → the run's probabilities: the sigmoid where a score is a log-odds (lp
        and ft heads, posneg prompts), else the study's per-row min-max scaling (raw dot products,
        cosine × logit scale)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.protocol == Protocol.MULTILABEL and (self.mode != Mode.ZS or has_negatives(self.prompt_set, self.config)):
            return 1.0 / (1.0 + np.exp(-logits))
        return row_minmax(logits)

    def column(self, label: str) -> int:
        """The scorer's output column of `label`."""
        if label not in self.labels:
            raise InputError(f"label {label!r}: run {self.run_id} has no such label (it has {', '.join(self.labels)})",
                             parameter="labels")
        return self.labels.index(label)


@dataclass(frozen=True)
class StoredRun:
    """What a run's scorer is rebuilt from."""

    run_id: str
    protocol: str
    prompt_set: str | None
    labels: list[str]
    config: dict[str, Any]


def _zero_shot_head(store: Store, run: StoredRun, visual: torch.nn.Module) -> Head:
    """The protocol's zero-shot head from the run's stored text embeddings."""
    from embedstore.prompts import build_prompts, custom_prompts, zero_shot_head

    with store.reader() as con:
        rows = queries.fetch(con, "run_prompts", run_id=run.run_id)
    stored = {(label, prompt): np.asarray(embedding, dtype=np.float32) for label, prompt, embedding in rows}
    prompts = build_prompts(str(run.prompt_set), run.labels, custom_prompts(run.config))
    missing = [p.text for p in prompts if (p.label, p.text) not in stored]
    if missing:
        raise IntegrityError(f"run {run.run_id}: text embeddings missing for prompts {missing[:3]}")
    text = np.stack([stored[(p.label, p.text)] for p in prompts])
    return zero_shot_head(run.protocol, prompts, text, run.labels, float(run.config.get("logit_scale", 1.0)))


def _probe_head(store: Store, run: StoredRun, visual: torch.nn.Module) -> Head:
    """The linear probe's stored head (checked against the manifest, never unpickled)."""
    return Head.from_state(load_arrays(store, f"artefacts/{run.run_id}/head.npz"))


def _finetuned_head(store: Store, run: StoredRun, visual: torch.nn.Module) -> Head:
    """The fine-tuned run's head; loads its fine-tuned weights into `visual` (checked, tensors only)."""
    state = load_tensors(store, f"artefacts/{run.run_id}/finetuned.pt")
    visual.load_state_dict(state["visual"])
    return Head.from_state(state["head"])


#: How each mode's scorer is rebuilt on the image tower.
HEAD_LOADERS: dict[Mode, Callable[[Store, StoredRun, torch.nn.Module], Head]] = {
    Mode.ZS: _zero_shot_head,
    Mode.LP: _probe_head,
    Mode.FT: _finetuned_head,
}


def load_subject(store: Store, run_id: str, device: torch.device) -> CamSubject:
    """Load a complete run's model (checking its weights are the run's), with its head on top."""
    with store.reader() as con:
        row = queries.fetch_one(con, "run_overview", run_id=run_id)
    if row is None or row[9] != "complete":
        raise InputError(f"run {run_id!r}: no complete run with that id (the `runs` table lists them)", parameter="run")
    _, mode, protocol, prompt_set, model_id, model_sha, dataset_id, *_ = row
    config = json.loads(row[13])
    run = StoredRun(run_id, protocol, prompt_set, list(config["labels"]), config)
    loaded = load_model(model_id)
    if loaded.sha256 != model_sha:
        raise IntegrityError(f"run {run_id}: model {model_id} here has weights sha256 {loaded.sha256[:12]}…, "
                             f"the run was made with {model_sha[:12]}…")
    visual = loaded.model.visual
    head = HEAD_LOADERS[Mode(mode)](store, run, visual)
    module = head_model(visual.float(), head).to(device)
    return CamSubject(run_id, mode, protocol, prompt_set, dataset_id, run.labels, loaded, module, config)
