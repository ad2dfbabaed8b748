"""CheXlocalize's protocol (Saporta et al., Nature Machine Intelligence 2022) on a run's maps.

A map becomes a segmentation by min-max normalising it and keeping what lies above a threshold: per
label, the one of 0.05 … 0.95 that maximises the mean IoU on the val split's annotated maps, or —
for a label val has no annotation of — Otsu's threshold of each map. mIoU and hit rate (the map's
maximum inside the annotation, no tolerance) are computed on the true-positive slice: the annotated
(image, label) pairs. Where several readers annotated an image, each reader's region is held out in
turn and both the reader and the model are scored against the other readers' union: the human
ceiling and the model on the same references.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedstore.analyses.common import MetricRow
from embedstore.analyses.localisation import HeldOutRecord, SegmentationFigures
from embedstore.analyses.readers import reader_records
from embedstore.analyses.segmentation import iou, map_hit, otsu_threshold, segment, size_class, tune_threshold
from embedstore.cam.targets import Target


@dataclass(frozen=True)
class Thresholds:
    """Each label's binarisation threshold (None: Otsu's per map) and where it came from."""

    tuned: dict[str, tuple[float, float, int]] = field(default_factory=dict)   # label → (threshold, val mIoU, maps)
    in_sample: bool = False

    def of(self, label: str) -> float | None:
        found = self.tuned.get(label)
        return found[0] if found else None

    def params(self) -> dict[str, object]:
        source = "the validated split itself (in-sample)" if self.in_sample else "val"
        return {"rule": f"per label, the threshold of 0.05…0.95 with the highest mIoU on {source}; "
                        "Otsu's per map for labels without annotated val maps",
                "tuned": {label: value[0] for label, value in self.tuned.items()}}

    def rows(self, params: dict[str, object]) -> list[MetricRow]:
        """`localisation.threshold` per tuned label: the threshold, with the mIoU it reached where tuned."""
        return [MetricRow("localisation.threshold", threshold, label,
                          params=params | {"tuned_miou": miou, "tuned_on_maps": maps, "in_sample": self.in_sample})
                for label, (threshold, miou, maps) in self.tuned.items()]


def tune_thresholds(targets: Sequence[Target], maps: Sequence[np.ndarray], in_sample: bool) -> Thresholds:
    """Per label, the threshold that maximises the mean IoU of its maps against their annotations."""
    by_label: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = defaultdict(lambda: ([], []))
    for target, cam_map in zip(targets, maps, strict=True):
        by_label[target.label][0].append(cam_map)
        by_label[target.label][1].append(target.region)
    tuned = {}
    for label, (label_maps, regions) in by_label.items():
        threshold, miou = tune_threshold(label_maps, regions)
        tuned[label] = (float(threshold), float(miou), len(label_maps))
    return Thresholds(tuned, in_sample)


def binarise(cam_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """The map's segmentation at `threshold`, or at Otsu's threshold of the map when None."""
    return segment(cam_map, otsu_threshold(cam_map) if threshold is None else threshold)


def segmentation_figures(cam_map: np.ndarray, region: np.ndarray, threshold: float | None,
                         cuts: tuple[float, float], rng: np.random.Generator) -> SegmentationFigures:
    """CheXlocalize's figures of one map against its annotation."""
    return SegmentationFigures(iou(binarise(cam_map, threshold), region), iou(binarise(cam_map, None), region),
                               map_hit(cam_map, region, rng), size_class(float(region.mean()), cuts))


def held_out_records(targets: Sequence[Target], maps: Sequence[np.ndarray], thresholds: Thresholds,
                     seed: int) -> list[HeldOutRecord]:
    """For every target read by two or more readers and every reader whose region the others can be
    checked against: the reader's IoU and hit against the others' union, and the model's map's."""
    rng = np.random.default_rng([seed, 3])
    records = []
    for target, cam_map in zip(targets, maps, strict=True):
        if len(target.readers) < 2:
            continue
        prediction = binarise(cam_map, thresholds.of(target.label))
        for human in reader_records(str(target.sample_id), target.label, target.readers):
            others = np.zeros_like(target.region)
            for reader, mask in target.readers.items():
                if reader != human.reader:
                    others |= mask
            records.append(HeldOutRecord(target.sample_id, target.label, human.reader, human.iou, human.hit,
                                         iou(prediction, others), map_hit(cam_map, others, rng)))
    return records
