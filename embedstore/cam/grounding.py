"""Phrase grounding for zero-shot runs (MS-CXR, Boecking et al. 2022): the map of an annotated
sentence — the similarity between the image and the sentence, embedded by the run's own text tower
and scored as the run scores its prompts (raw dot product under the study protocol, cosine × logit
scale under multilabel) — against the region that sentence describes.

Per (image, sentence): the hit (the map's maximum inside the region), IoU of the map binarised at
Otsu's threshold, and MS-CXR's contrast-to-noise ratio |mean inside − mean outside| / √(var inside +
var outside) on the raw map; the same figures of the label's own map on the same region show what
the sentence adds over the label name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedstore.analyses.common import AnalysisOptions, MetricRow
from embedstore.analyses.localisation import summarise_columns
from embedstore.analyses.segmentation import contrast_to_noise, iou, map_hit
from embedstore.cam.chexlocalize import binarise
from embedstore.labels import LOCALISED_FINDINGS

if TYPE_CHECKING:
    import torch

    from embedstore.cam.workspace import Workspace


@dataclass(frozen=True)
class PhraseRecord:
    """One annotated sentence's map and its label's map, scored against the sentence's region."""

    sample_id: int
    label: str
    sentence: str
    hit: bool
    iou: float
    cnr: float
    label_hit: bool
    label_iou: float
    label_cnr: float


@dataclass(frozen=True)
class PhraseScorer:
    """The run's image tower with one output per sentence, and the sentences' text embeddings."""

    sentences: list[str]
    labels: list[str]
    embeddings: np.ndarray
    module: torch.nn.Module

    def column(self, sentence: str) -> int:
        return self.sentences.index(sentence)


def phrase_scorer(workspace: Workspace, sentences: Sequence[tuple[str, str]]) -> PhraseScorer:
    """A scorer for (label, sentence) pairs built like the run's zero-shot head from their text embeddings."""
    from embedstore.cam.subject import head_model
    from embedstore.prompts import Prompt, zero_shot_head

    texts = [sentence for _, sentence in sentences]
    embeddings = workspace.subject.loaded.encode_text(texts).cpu().numpy()
    prompts = [Prompt(text, text, True) for text in texts]
    head = zero_shot_head(workspace.subject.protocol, prompts, embeddings, texts,
                          float(workspace.subject.config.get("logit_scale", 1.0)))
    module = head_model(workspace.subject.visual, head).to(workspace.device)
    return PhraseScorer(texts, [label for label, _ in sentences], embeddings, module)


def phrase_record(sample_id: int, label: str, sentence: str, region: np.ndarray, phrase_map: np.ndarray,
                  label_map: np.ndarray, rng: np.random.Generator) -> PhraseRecord:
    """The figures of one sentence's map and of its label's map against the sentence's region."""
    return PhraseRecord(sample_id, label, sentence,
                        map_hit(phrase_map, region, rng), iou(binarise(phrase_map, None), region),
                        contrast_to_noise(phrase_map, region),
                        map_hit(label_map, region, rng), iou(binarise(label_map, None), region),
                        contrast_to_noise(label_map, region))


def grounding_rows(records: Sequence[PhraseRecord], options: AnalysisOptions, params: dict[str, object],
                   localised: Collection[str] = LOCALISED_FINDINGS) -> list[MetricRow]:
    """`grounding.*` (the sentence's map) and `grounding.label_*` (the label's map) means per label and
    overall, with bootstrap intervals over (image, sentence) pairs."""
    def column(values: list[Any]) -> np.ndarray:
        return np.array(values, dtype=np.float64)

    columns = {"grounding.hit_rate": column([r.hit for r in records]), "grounding.miou": column([r.iou for r in records]),
               "grounding.cnr": column([r.cnr for r in records]),
               "grounding.label_hit_rate": column([r.label_hit for r in records]),
               "grounding.label_miou": column([r.label_iou for r in records]),
               "grounding.label_cnr": column([r.label_cnr for r in records])}
    return summarise_columns([r.label for r in records], columns, options,
                             params | {"grounding_threshold": "Otsu per map", "n_sentences":
                                       len({r.sentence for r in records})}, localised)


def phrase_embedding_rows(run_id: str, scorer: PhraseScorer, stored: set[tuple[str, str]]) -> pa.Table:
    """The sentences' text embeddings as `text_embeddings` rows of the run (those not stored yet)."""
    fresh = [k for k, (label, sentence) in enumerate(zip(scorer.labels, scorer.sentences, strict=True))
             if (label, sentence) not in stored]
    return pa.table({
        "run_id": pa.array([run_id] * len(fresh), pa.string()),
        "label": pa.array([scorer.labels[k] for k in fresh], pa.string()),
        "prompt": pa.array([scorer.sentences[k] for k in fresh], pa.string()),
        "embedding": pa.array([scorer.embeddings[k].astype(np.float32).tolist() for k in fresh],
                              pa.list_(pa.float32())),
    })
