"""Zero-shot prompt sets and how each protocol turns image and text embeddings into scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


#: `--prompts`: the study's bare names, a template ensemble, or CheXzero-style positive/negative pairs.
PROMPT_SETS: dict[str, Callable[[str], list[Prompt]]] = {
    "names": _names,
    "templates": _templates,
    "posneg": _posneg,
}
DEFAULT_PROMPTS = {"study": "names", "multilabel": "templates"}


def build_prompts(prompt_set: str, labels: list[str]) -> list[Prompt]:
    return [prompt for label in labels for prompt in PROMPT_SETS[prompt_set](label)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_embedding(prompts: list[Prompt], text: np.ndarray, label: str, positive: bool, unit: bool) -> np.ndarray:
    rows = [i for i, p in enumerate(prompts) if p.label == label and p.positive == positive]
    chosen = _unit(text[rows]) if unit else text[rows]
    mean = chosen.mean(axis=0)
    return _unit(mean) if unit else mean


def study_scores(image: np.ndarray, text: np.ndarray, prompts: list[Prompt], labels: list[str],
                 logit_scale: float) -> np.ndarray:
    """DESIGN section 2: raw `encode_image` · raw `encode_text` — no normalisation, no logit scale."""
    label_text = np.stack([_mean_embedding(prompts, text, label, True, unit=False) for label in labels])
    return image.astype(np.float64) @ label_text.T.astype(np.float64)


def multilabel_scores(image: np.ndarray, text: np.ndarray, prompts: list[Prompt], labels: list[str],
                      logit_scale: float) -> np.ndarray:
    """Cosine × logit scale against each label's (ensembled) prompt; with negative prompts, the
    log-odds of the two-way softmax between "{label}" and "no {label}" (CheXzero)."""
    unit_image = _unit(image.astype(np.float64))
    scores = []
    for label in labels:
        positive = logit_scale * unit_image @ _mean_embedding(prompts, text, label, True, unit=True)
        if any(p.label == label and not p.positive for p in prompts):
            positive = positive - logit_scale * unit_image @ _mean_embedding(prompts, text, label, False, unit=True)
        scores.append(positive)
    return np.stack(scores, axis=1)


ZERO_SHOT_SCORERS: dict[str, Callable[..., np.ndarray]] = {
    "study": study_scores,
    "multilabel": multilabel_scores,
}
