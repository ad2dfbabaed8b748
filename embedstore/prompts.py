"""Zero-shot prompt sets and how each protocol turns image and text embeddings into scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embedstore.choices import PromptSet, Protocol, parse
from embedstore.heads import Head

TEMPLATES = (
    "{label}",
    "{label}.",
    "a chest x-ray showing {label}",
    "findings consistent with {label}",
    "{label} is present",
)


@dataclass(frozen=True)
class Prompt:
    label: str
    text: str
    positive: bool


def _names(label: str) -> list[Prompt]:
    return [Prompt(label, label, True)]


def _templates(label: str) -> list[Prompt]:
    return [Prompt(label, template.format(label=label.lower() if i > 1 else label), True)
            for i, template in enumerate(TEMPLATES)]


def _posneg(label: str) -> list[Prompt]:
    return [Prompt(label, label, True), Prompt(label, f"no {label.lower()}", False)]


#: The prompt sets: the study's bare names, a template ensemble, or CheXzero-style positive/negative pairs.
PROMPT_SETS: dict[PromptSet, Callable[[str], list[Prompt]]] = {
    PromptSet.NAMES: _names,
    PromptSet.TEMPLATES: _templates,
    PromptSet.POSNEG: _posneg,
}
#: Each protocol's prompt set when none is asked for.
DEFAULT_PROMPTS: dict[Protocol, PromptSet] = {Protocol.STUDY: PromptSet.NAMES, Protocol.MULTILABEL: PromptSet.TEMPLATES}


def build_prompts(prompt_set: str, labels: list[str]) -> list[Prompt]:
    """Every prompt of `prompt_set` for each label, in label order."""
    builder = PROMPT_SETS[parse(PromptSet, prompt_set, "prompts")]
    return [prompt for label in labels for prompt in builder(label)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_embedding(prompts: list[Prompt], text: np.ndarray, label: str, positive: bool, unit: bool) -> np.ndarray:
    rows = [i for i, p in enumerate(prompts) if p.label == label and p.positive == positive]
    chosen = _unit(text[rows]) if unit else text[rows]
    mean = chosen.mean(axis=0)
    return _unit(mean) if unit else mean


def _study_head(prompts: list[Prompt], text: np.ndarray, labels: list[str], logit_scale: float) -> Head:
    """The study's zero-shot logit: raw `encode_image` · raw `encode_text` — no normalisation, no logit scale."""
    weight = np.stack([_mean_embedding(prompts, text, label, True, unit=False) for label in labels])
    return Head(weight.astype(np.float64), np.zeros(len(labels)), normalize_input=False)


def _multilabel_head(prompts: list[Prompt], text: np.ndarray, labels: list[str], logit_scale: float) -> Head:
    """Cosine × logit scale against each label's (ensembled) prompt; with negative prompts, the
    log-odds of the two-way softmax between "{label}" and "no {label}" (CheXzero)."""
    rows = []
    for label in labels:
        direction = _mean_embedding(prompts, text, label, True, unit=True).astype(np.float64)
        if any(p.label == label and not p.positive for p in prompts):
            direction = direction - _mean_embedding(prompts, text, label, False, unit=True)
        rows.append(logit_scale * direction)
    return Head(np.stack(rows), np.zeros(len(labels)), normalize_input=True)


#: A zero-shot classifier is a linear head on the image embedding; scoring and Grad-CAM share it.
ZERO_SHOT_HEADS: dict[Protocol, Callable[[list[Prompt], np.ndarray, list[str], float], Head]] = {
    Protocol.STUDY: _study_head,
    Protocol.MULTILABEL: _multilabel_head,
}


def zero_shot_head(protocol: str, prompts: list[Prompt], text: np.ndarray, labels: list[str],
                   logit_scale: float) -> Head:
    """The protocol's zero-shot scorer as a linear head: `head.logits(image_embeddings)` are the scores."""
    return ZERO_SHOT_HEADS[parse(Protocol, protocol, "protocol")](prompts, text, labels, logit_scale)
