"""What a map is checked against: the annotated regions of one (image, label) on the model's input.

An annotation set (any format `embedstore.annotation_sets` reads) becomes one `Target` per
annotated (image, label) of a split: the union of every reader's regions (the reference of the
localisation figures), each reader's own region where two or more readers read the image (for the
human ceiling: a reader who read the image and drew nothing has an empty region), and the sentences
that describe regions (MS-CXR phrase grounding), each with its own region.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from embedstore.cam.workspace import study_sample

if TYPE_CHECKING:
    from embedstore.annotation_sets import AnnotationSet, Region
    from embedstore.cam.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One annotated (image, label) on the model's input."""

    sample_id: int
    label: str
    region: np.ndarray
    source: str
    readers: dict[str, np.ndarray] = field(default_factory=dict)
    phrases: tuple[tuple[str, np.ndarray], ...] = ()

    @property
    def area_share(self) -> float:
        return float(self.region.mean())


def _union(masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for mask in masks:
        out |= mask
    return out


def split_targets(workspace: Workspace, annotations: AnnotationSet, split: str, n: int | None = None,
                  seed: int = 42) -> tuple[list[Target], int]:
    """The targets on `split`'s images (`n`: on N annotated images drawn as the study did), in
    (sample, label column) order, and how many (image, label) the model's centre crop cuts away
    entirely (left out with a warning)."""
    by_file = {row.filename: s for s, row in workspace.images.items()}
    grouped: dict[tuple[int, str], list[Region]] = defaultdict(list)
    for region in annotations.regions:
        sample_id = by_file.get(region.filename)
        if sample_id is not None and workspace.images[sample_id].split == split:
            grouped[(sample_id, region.label)].append(region)
    if n is not None and grouped:
        images = sorted({s for s, _ in grouped})
        drawn = {images[i] for i in study_sample(len(images), min(n, len(images)), seed)}
        grouped = defaultdict(list, {key: value for key, value in grouped.items() if key[0] in drawn})
    targets, cut_away = [], 0
    for (sample_id, label), regions in sorted(grouped.items(),
                                              key=lambda item: (item[0][0], workspace.subject.column(item[0][1]))):
        masks = [workspace.input_mask(sample_id, region) for region in regions]
        union = _union(masks, masks[0].shape)
        if not union.any():
            log.warning("%s: the annotation lies outside what the model sees (its centre crop); left out",
                        regions[0].source)
            cut_away += 1
            continue
        filename = workspace.images[sample_id].filename
        readers = annotations.readers.get(filename, ())
        per_reader = ({reader: _union([m for m, r in zip(masks, regions, strict=True) if r.reader == reader],
                                      union.shape) for reader in readers} if len(readers) >= 2 else {})
        sentences: dict[str, list[np.ndarray]] = defaultdict(list)
        for mask, region in zip(masks, regions, strict=True):
            if region.text:
                sentences[region.text].append(mask)
        phrases = tuple((text, _union(found, union.shape)) for text, found in sentences.items()
                        if _union(found, union.shape).any())
        targets.append(Target(sample_id, label, union, regions[0].source, per_reader, phrases))
    return targets, cut_away
