"""The synthetic IU-Xray benchmark: chest-like PNGs with localised findings.

It writes the files a real IU-Xray copy has — the study's 14-label CSV, the Kaggle
`indiana_reports.csv` / `indiana_projections.csv` pair, `images/images_normalized/*.png` — plus
the ground truth a real copy lacks: `annotations.csv` (one box per finding) and `masks/`, and the
same ground truth in the public annotation formats of its family's benchmarks (`annotations/`: COCO,
RSNA Pneumonia, SIIM-ACR Pneumothorax).

Every image is drawn from its own seeded random streams, so the same seed gives byte-identical
files whatever the number of worker processes. Each finding changes pixels only inside its mask,
so its box is where the finding is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from embedstore.choices import SampleDomain, SampleLayout, parse
from embedstore.datasets.sample_annotations import (
    AnnotatedImage,
    DrawnRegion,
    regions_of,
    write_coco,
    write_rsna,
    write_siim,
)
from embedstore.datasets.sample_writing import write_csv
from embedstore.errors import InputError
from embedstore.iuxray import IMAGE_DIR, PROJECTIONS_CSV, REPORTS_CSV, STUDY_CSV, TEXT_COLUMNS
from embedstore.labels import CHEXPERT_LABELS, NO_FINDING

log = logging.getLogger(__name__)

#: Frontal-image counts per label in IU-Xray, of 3,818 frontal images.
IUXRAY_COUNTS: dict[str, int] = {
    "No Finding": 2400, "Lung Opacity": 516, "Cardiomegaly": 415, "Atelectasis": 216, "Lung Lesion": 165,
    "Support Devices": 163, "Pleural Effusion": 129, "Fracture": 127, "Enlarged Cardiomediastinum": 70,
    "Pneumonia": 68, "Pleural Other": 56, "Edema": 49, "Consolidation": 31, "Pneumothorax": 20,
}
IUXRAY_FRONTAL = 3818
FINDINGS: tuple[str, ...] = tuple(label for label in CHEXPERT_LABELS if label != NO_FINDING)
ANNOTATIONS_CSV = "annotations.csv"
MASK_DIR = "masks"
#: The public annotation files written besides annotations.csv: COCO, RSNA Pneumonia, SIIM-ACR.
ANNOTATION_SETS_DIR = "annotations"
COCO_JSON, RSNA_CSV, SIIM_CSV = "coco.json", "stage_2_train_labels.csv", "train-rle.csv"
#: The record of the labels written flipped (`--label-noise`): uid, label, given (as written), true.
LABEL_NOISE_CSV = "label_noise.csv"
#: Above half the labels flipped, the written labels say more about the noise than about the films.
MAX_LABEL_NOISE = 0.5


@dataclass(frozen=True)
class DomainStyle:
    """Acquisition differences between the pretraining (source) and evaluation (target) domains."""

    contrast: tuple[float, float]
    brightness: tuple[float, float]
    gamma: tuple[float, float]
    noise: float
    balanced: bool


DOMAINS: dict[SampleDomain, DomainStyle] = {
    SampleDomain.TARGET: DomainStyle(contrast=(0.85, 1.15), brightness=(-0.04, 0.08), gamma=(0.85, 1.2), noise=0.035,
                          balanced=False),
    SampleDomain.SOURCE: DomainStyle(contrast=(0.95, 1.05), brightness=(0.0, 0.04), gamma=(0.95, 1.05), noise=0.02,
                          balanced=True),
}


@dataclass(frozen=True)
class SampleConfig:
    """Options of `embedstore data sample`."""

    out: Path
    n: int = IUXRAY_FRONTAL
    seed: int = 42
    domain: SampleDomain = SampleDomain.TARGET
    size: int = 256
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    #: share of the (study, finding) labels written flipped (`label_noise.csv` records which); 0: none
    label_noise: float = 0.0

    def validate(self) -> None:
        parse(SampleDomain, self.domain, "domain")
        if not 0.0 <= self.label_noise <= MAX_LABEL_NOISE:
            raise InputError(f"label_noise {self.label_noise}: choose a share between 0 and {MAX_LABEL_NOISE}",
                             parameter="label_noise")
        if self.n < 10:
            raise InputError(f"n {self.n}: need at least 10 images", parameter="n")
        if not 64 <= self.size <= 1024:
            raise InputError(f"size {self.size}: choose between 64 and 1024 pixels", parameter="size")
        from embedstore.outputs import check_output_path

        check_output_path(None, self.out, folder=True)


# ---------------------------------------------------------------------------------------------
# Label assignment
# ---------------------------------------------------------------------------------------------

def _images_per_uid(n: int, rng: np.random.Generator) -> list[int]:
    """Most studies have one frontal image, about 5 % have two (as in IU-Xray)."""
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(2 if rng.random() < 0.05 and sum(counts) + 2 <= n else 1)
    return counts


def _assign_imbalanced(n_uids: int, scale: float, rng: np.random.Generator) -> list[set[str]]:
    """Label sets with IU-Xray's prevalence scaled to the sample: each abnormal study gets at least one."""
    n_abnormal = min(n_uids, max(1, round(n_uids - IUXRAY_COUNTS[NO_FINDING] * scale)))
    tokens = [label for label in FINDINGS for _ in range(round(IUXRAY_COUNTS[label] * scale))]
    order = rng.permutation(len(tokens))
    tokens = [tokens[i] for i in order]
    abnormal = rng.choice(n_uids, size=n_abnormal, replace=False)
    sets: list[set[str]] = [set() for _ in range(n_uids)]
    for uid_index, label in zip(abnormal, tokens[:n_abnormal], strict=False):
        sets[uid_index].add(label)
    for label in tokens[n_abnormal:]:
        candidates = [i for i in abnormal if label not in sets[i]]
        sets[int(rng.choice(candidates))].add(label)
    return sets


def _assign_balanced(n_uids: int, rng: np.random.Generator) -> list[set[str]]:
    """Every finding about equally common; a fifth of the studies normal."""
    sets: list[set[str]] = []
    for _ in range(n_uids):
        if rng.random() < 0.2:
            sets.append(set())
        else:
            k = int(rng.integers(1, 4))
            sets.append({FINDINGS[i] for i in rng.choice(len(FINDINGS), size=k, replace=False)})
    return sets


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

POSITIVE_SENTENCES: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("The cardiomediastinal silhouette is enlarged.", "Widened mediastinum."),
    "Cardiomegaly": ("Cardiomegaly.", "The heart is enlarged."),
    "Lung Opacity": ("Hazy lung opacity in the {side} lung.", "There is an airspace opacity on the {side}."),
    "Lung Lesion": ("A {mm} mm nodule in the {side} lung, a lung lesion.", "Rounded lung lesion on the {side}."),
    "Edema": ("Perihilar haziness consistent with pulmonary edema.", "Interstitial edema."),
    "Consolidation": ("Dense consolidation in the {side} lung.", "Focal consolidation on the {side}."),
    "Pneumonia": ("{Side} lower lobe airspace disease concerning for pneumonia.", "Pneumonia at the {side} base."),
    "Atelectasis": ("Linear atelectasis at the {side} base.", "Subsegmental atelectasis on the {side}."),
    "Pneumothorax": ("Small {side} apical pneumothorax.", "There is a {side} pneumothorax."),
    "Pleural Effusion": ("Small {side} pleural effusion.", "Blunting of the {side} costophrenic angle, effusion."),
    "Pleural Other": ("{Side} pleural thickening.", "Pleural thickening along the {side} chest wall."),
    "Fracture": ("Healing {side} rib fracture.", "Old fracture of a {side} rib."),
    "Support Devices": ("Support devices: tube and wires in place.", "Monitoring leads and a tube overlie the chest."),
}
NEGATIVE_SENTENCES: dict[str, str] = {
    "Cardiomegaly": "Heart size is normal.",
    "Pneumothorax": "No pneumothorax.",
    "Pleural Effusion": "No pleural effusion.",
    "Consolidation": "No focal consolidation.",
    "Edema": "No pulmonary edema.",
    "Fracture": "No acute bony abnormality.",
}
UNCERTAIN_SENTENCES: dict[str, str] = {
    "Pneumonia": "Possible early pneumonia cannot be excluded.",
    "Atelectasis": "Questionable minimal atelectasis.",
    "Edema": "Possible mild edema.",
}
#: The IU-Xray "Problems" term the synthetic reports file each finding under (the Kaggle pair).
PROBLEM_TERMS: dict[str, str] = {
    "Enlarged Cardiomediastinum": "Mediastinum", "Cardiomegaly": "Cardiomegaly", "Lung Opacity": "Opacity",
    "Lung Lesion": "Nodule", "Edema": "Edema", "Consolidation": "Consolidation", "Pneumonia": "Pneumonia",
    "Atelectasis": "Pulmonary Atelectasis", "Pneumothorax": "Pneumothorax", "Pleural Effusion": "Pleural Effusion",
    "Pleural Other": "Thickening", "Fracture": "Fractures, Bone", "Support Devices": "Medical Device",
}
INDICATIONS = ("Chest pain.", "Shortness of breath.", "Cough and fever.", "Preoperative evaluation.",
               "Follow-up.", "Dyspnea.", "Trauma.")


@dataclass(frozen=True)
class Study:
    """One uid: its findings (with the side each is on), report and labeler values."""

    uid: int
    findings: tuple[str, ...]
    sides: dict[str, int]
    report: dict[str, str]
    values: dict[str, str]


def _make_study(uid: int, findings: set[str], rng: np.random.Generator) -> Study:
    ordered = tuple(label for label in FINDINGS if label in findings)
    sides = {label: int(rng.integers(0, 2)) for label in FINDINGS}
    sentences = []
    values = {label: "" for label in CHEXPERT_LABELS}
    for label in ordered:
        side = ("right", "left")[sides[label]]
        template = POSITIVE_SENTENCES[label][int(rng.integers(0, 2))]
        sentences.append(template.format(side=side, Side=side.capitalize(), mm=int(rng.integers(6, 15))))
        values[label] = "1.0"
    for label, sentence in NEGATIVE_SENTENCES.items():
        if label not in findings and rng.random() < 0.5:
            sentences.append(sentence)
            values[label] = "0.0"
    uncertain = [label for label in UNCERTAIN_SENTENCES if label not in findings and rng.random() < 0.04]
    for label in uncertain:
        sentences.append(UNCERTAIN_SENTENCES[label])
        values[label] = "-1.0"
    if not ordered and not uncertain:
        values[NO_FINDING] = "1.0"
        sentences.append("The lungs are clear.")
    impression = (
        "No acute cardiopulmonary abnormality." if not ordered
        else " ".join(f"{label}." for label in ordered)
    )
    report = {
        "indication": INDICATIONS[int(rng.integers(0, len(INDICATIONS)))],
        "comparison": "None." if rng.random() < 0.7 else "Prior study.",
        "findings": " ".join(sentences),
        "impression": impression,
    }
    return Study(uid, ordered, sides, report, values)


# ---------------------------------------------------------------------------------------------
# Label noise
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelFlip:
    """One written label that disagrees with its study: `given` is what the labels file says, `true`
    what the films and the report show (1 positive, 0 negative)."""

    uid: int
    label: str
    given: int
    true: int


def flip_labels(studies: list[Study], share: float, seed: int, domain: SampleDomain) -> tuple[list[Study], list[LabelFlip]]:
    """Flip `share` of the (study, finding) labels, chosen uniformly from a stream of their own (the
    films, reports and every other file are drawn as without noise): a positive is written negative
    (0.0) and a negative or blank one positive (1.0). Uncertain labels (-1.0) are never flipped, and No
    Finding is not flipped but recomputed from the flipped findings (1.0 where none is positive or
    uncertain, else blank), as the study's labeler derives it. Returns the studies with the labels to
    write, and the flips (by uid, then finding order)."""
    pairs = [(index, label) for index, study in enumerate(studies) for label in FINDINGS
             if study.values[label] != "-1.0"]
    count = round(share * len(pairs))
    if count == 0:
        return studies, []
    rng = np.random.default_rng([seed, list(DOMAINS).index(domain), LABEL_NOISE_STREAM])
    chosen = sorted(int(i) for i in rng.choice(len(pairs), size=count, replace=False))
    written = [dict(study.values) for study in studies]
    flips = []
    for position in chosen:
        index, label = pairs[position]
        true = int(studies[index].values[label] == "1.0")
        written[index][label] = "0.0" if true else "1.0"
        flips.append(LabelFlip(studies[index].uid, label, 1 - true, true))
    noisy = []
    for study, values in zip(studies, written, strict=True):
        if values != study.values:
            abnormal = any(values[label] in ("1.0", "-1.0") for label in FINDINGS)
            values[NO_FINDING] = "" if abnormal else "1.0"
            study = Study(study.uid, study.findings, study.sides, study.report, values)
        noisy.append(study)
    return noisy, flips


#: The purpose number of the label-noise stream (plan_dataset draws from 7, the films from 0-1, 2 and 10+).
LABEL_NOISE_STREAM = 97


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

class Canvas:
    """Normalised coordinate grids (0..1) and the layers an image is drawn from."""

    def __init__(self, size: int) -> None:
        axis = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.size = size
        self.y, self.x = np.meshgrid(axis, axis, indexing="ij")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def soft_ellipse(self, cx: float, cy: float, rx: float, ry: float, edge: float = 0.08) -> np.ndarray:
        r = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return np.clip((1.0 - r) / edge, 0.0, 1.0)

    def gaussian(self, cx: float, cy: float, sigma: float) -> np.ndarray:
        return np.exp(-(((self.x - cx) ** 2 + (self.y - cy) ** 2) / (2 * sigma**2)))

    def segment(self, x0: float, y0: float, x1: float, y1: float, half_width: float) -> np.ndarray:
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        return np.hypot(self.x - (x0 + t * dx), self.y - (y0 + t * dy)) <= half_width

    def smooth_noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        coarse = rng.normal(size=(cells, cells)).astype(np.float32)
        image = Image.fromarray(coarse, mode="F").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.float32)


@dataclass
class Anatomy:
    """One frontal chest: the layers findings modify, and where its organs are."""

    canvas: Canvas
    lungs: list[tuple[float, float, float, float]]
    heart: tuple[float, float, float, float]
    mediastinum_half_width: float
    ribs: list[tuple[int, float, float]]
    base: np.ndarray
    markings: np.ndarray
    rib_layer: np.ndarray
    extra: np.ndarray

    def lung_mask(self, side: int) -> np.ndarray:
        return self.canvas.ellipse(*self.lungs[side])

    def compose(self) -> np.ndarray:
        lung = np.maximum(self.lung_mask(0), self.lung_mask(1))
        return self.base + self.markings * lung + self.rib_layer + self.extra


def _rib_curve(rib_y: float, bend: float, x: np.ndarray, centre: float) -> np.ndarray:
    return rib_y + bend * (x - centre) ** 2


def _draw_ribs(canvas: Canvas, lungs: list[tuple[float, float, float, float]],
               ribs: list[tuple[int, float, float]], gap: tuple[int, float, float] | None = None) -> np.ndarray:
    """Rib arcs over each lung; `gap` = (rib index, x start, x end) leaves a break (a fracture)."""
    layer = np.zeros_like(canvas.x)
    for index, (side, rib_y, bend) in enumerate(ribs):
        cx, cy, rx, ry = lungs[side]
        within = np.abs(canvas.x - cx) <= rx * 1.05
        near = np.abs(canvas.y - _rib_curve(rib_y, bend, canvas.x, cx)) <= 0.009
        stroke = within & near
        if gap is not None and gap[0] == index:
            stroke &= ~((canvas.x >= gap[1]) & (canvas.x <= gap[2]))
        layer += 0.11 * stroke
    return layer


def _anatomy(canvas: Canvas, rng: np.random.Generator) -> Anatomy:
    jitter = lambda scale: float(rng.normal(0, scale))  # noqa: E731
    shift_x, shift_y = jitter(0.015), jitter(0.015)
    lungs = [
        (0.31 + shift_x + jitter(0.008), 0.46 + shift_y, 0.135 + jitter(0.008), 0.27 + jitter(0.01)),
        (0.69 + shift_x + jitter(0.008), 0.46 + shift_y, 0.135 + jitter(0.008), 0.27 + jitter(0.01)),
    ]
    heart = (0.555 + shift_x + jitter(0.01), 0.62 + shift_y, 0.115 + jitter(0.008), 0.095 + jitter(0.006))
    mediastinum_half_width = 0.055 + jitter(0.004)
    base = 0.06 + 0.34 * canvas.soft_ellipse(0.5 + shift_x, 0.56 + shift_y, 0.46, 0.58, edge=0.15)
    for side in (0, 1):
        base -= 0.26 * canvas.soft_ellipse(*lungs[side], edge=0.12)
    mediastinum = (np.abs(canvas.x - (0.5 + shift_x)) <= mediastinum_half_width) & (canvas.y >= 0.12) & (canvas.y <= 0.62)
    base += 0.22 * mediastinum
    base += 0.10 * (np.abs(canvas.x - (0.5 + shift_x)) <= 0.025)
    base += 0.30 * canvas.soft_ellipse(*heart, edge=0.15)
    base += 0.25 * (canvas.y > 0.46 + shift_y + 0.27 - 0.02) * canvas.soft_ellipse(0.5 + shift_x, 0.8, 0.42, 0.2)
    ribs = []
    for side in (0, 1):
        for k in range(7):
            ribs.append((side, 0.22 + shift_y + 0.062 * k + jitter(0.004), 1.6 + jitter(0.15)))
    markings = 0.035 * canvas.smooth_noise(rng, 24)
    return Anatomy(
        canvas=canvas, lungs=lungs, heart=heart, mediastinum_half_width=mediastinum_half_width, ribs=ribs,
        base=base, markings=markings, rib_layer=_draw_ribs(canvas, lungs, ribs), extra=np.zeros_like(canvas.x),
    )


def _point_in_lung(anatomy: Anatomy, side: int, rng: np.random.Generator, y_range: tuple[float, float],
                   margin: float) -> tuple[float, float]:
    cx, cy, rx, ry = anatomy.lungs[side]
    for _ in range(100):
        x = cx + rng.uniform(-1, 1) * rx
        y = cy + rng.uniform(*y_range) * ry
        if ((x - cx) / (rx - margin)) ** 2 + ((y - cy) / (ry - margin)) ** 2 <= 1:
            return float(x), float(y)
    return cx, cy


# Each finding draws into the anatomy and returns its mask; pixels outside the mask are untouched.
FindingPainter = Callable[[Anatomy, int, np.random.Generator], np.ndarray]


def _cardiomegaly(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy, rx, ry = a.heart
    big = (cx + 0.02, cy, rx * rng.uniform(1.4, 1.6), ry * rng.uniform(1.2, 1.35))
    mask = a.canvas.ellipse(*big)
    grown = a.canvas.soft_ellipse(*big, edge=0.15) - a.canvas.soft_ellipse(*a.heart, edge=0.15)
    a.extra += 0.3 * np.clip(grown, 0, None) * mask
    return mask


def _enlarged_cardiomediastinum(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    centre = (a.lungs[0][0] + a.lungs[1][0]) / 2
    half = a.mediastinum_half_width * rng.uniform(1.9, 2.3)
    mask = (np.abs(a.canvas.x - centre) <= half) & (a.canvas.y >= 0.14) & (a.canvas.y <= 0.42)
    a.extra += 0.2 * mask * (np.abs(a.canvas.x - centre) > a.mediastinum_half_width)
    return mask


def _blob(a: Anatomy, side: int, centre: tuple[float, float], sigma: float, amplitude: float) -> np.ndarray:
    field = a.canvas.gaussian(*centre, sigma)
    mask = (field > 0.15) & a.lung_mask(side)
    a.extra += amplitude * field * mask
    return mask


def _lung_opacity(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    return _blob(a, side, _point_in_lung(a, side, rng, (-0.5, 0.5), 0.04), rng.uniform(0.06, 0.08), 0.17)


def _lung_lesion(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _point_in_lung(a, side, rng, (-0.7, 0.5), 0.05)
    radius = rng.uniform(0.022, 0.035)
    mask = a.canvas.ellipse(x, y, radius, radius)
    a.extra += 0.33 * mask
    return mask


def _edema(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(a.canvas.x, dtype=bool)
    for lung_side in (0, 1):
        cx, cy, rx, _ = a.lungs[lung_side]
        hilum_x = cx + (rx * 0.55 if lung_side == 0 else -rx * 0.55)
        mask |= _blob(a, lung_side, (hilum_x, cy - 0.01), 0.06, 0.15)
    return mask


def _consolidation(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _point_in_lung(a, side, rng, (-0.4, 0.3), 0.07)
    mask = np.zeros_like(a.canvas.x, dtype=bool)
    for _ in range(3):
        mask |= a.canvas.ellipse(x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03),
                                 rng.uniform(0.03, 0.045), rng.uniform(0.025, 0.04))
    mask &= a.lung_mask(side)
    a.extra += 0.36 * mask
    return mask


def _pneumonia(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    return _blob(a, side, _point_in_lung(a, side, rng, (0.45, 0.7), 0.05), rng.uniform(0.045, 0.06), 0.26)


def _atelectasis(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _point_in_lung(a, side, rng, (0.3, 0.55), 0.08)
    angle = rng.uniform(-0.35, 0.35)
    half = rng.uniform(0.06, 0.08)
    mask = a.canvas.segment(x - half, y - half * angle, x + half, y + half * angle, 0.008) & a.lung_mask(side)
    a.extra += 0.3 * mask
    return mask


def _pneumothorax(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy, rx, ry = a.lungs[side]
    apex_bottom = cy - ry * rng.uniform(0.35, 0.5)
    mask = a.lung_mask(side) & (a.canvas.y <= apex_bottom)
    collapsed = a.canvas.ellipse(cx, cy + 0.03, rx * 0.85, ry * 0.92)
    free_air = mask & ~collapsed
    # Absent lung markings and a thin bright visceral pleural line at the collapsed lung's edge.
    a.extra -= a.markings * free_air + 0.06 * free_air
    edge = collapsed & ~a.canvas.ellipse(cx, cy + 0.03, rx * 0.85 - 0.01, ry * 0.92 - 0.01)
    a.extra += 0.22 * (edge & mask)
    return mask


def _pleural_effusion(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy, rx, ry = a.lungs[side]
    level = cy + ry * rng.uniform(0.45, 0.65)
    lateral = a.canvas.x - cx if side == 1 else cx - a.canvas.x
    meniscus = level - 0.08 * np.clip(lateral / rx, 0, 1) ** 2
    mask = a.lung_mask(side) & (a.canvas.y >= meniscus)
    a.extra += 0.3 * mask
    return mask


def _pleural_other(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy, rx, ry = a.lungs[side]
    inner = a.canvas.ellipse(cx, cy, rx - 0.022, ry - 0.022)
    y0 = cy - ry * rng.uniform(0.1, 0.4)
    mask = a.lung_mask(side) & ~inner & (a.canvas.y >= y0) & (a.canvas.y <= y0 + ry * 0.6)
    lateral = (a.canvas.x < cx) if side == 0 else (a.canvas.x > cx)
    mask &= lateral
    a.extra += 0.25 * mask
    return mask


def _fracture(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    candidates = [i for i, (rib_side, _, _) in enumerate(a.ribs) if rib_side == side][1:6]
    index = int(rng.choice(candidates))
    _, rib_y, bend = a.ribs[index]
    cx, _, rx, _ = a.lungs[side]
    start = cx + rng.uniform(-0.6, 0.4) * rx
    gap = (index, start, start + 0.02)
    before = a.rib_layer
    broken = _draw_ribs(a.canvas, a.lungs, a.ribs, gap=gap)
    # The fragment beyond the break is displaced downwards: a step in the rib's outline.
    curve = _rib_curve(rib_y, bend, a.canvas.x, cx)
    fragment = (a.canvas.x > start + 0.02) & (a.canvas.x <= start + 0.06)
    broken = broken - 0.11 * (fragment & (np.abs(a.canvas.y - curve) <= 0.009))
    broken = broken + 0.11 * (fragment & (np.abs(a.canvas.y - curve - 0.014) <= 0.009))
    y_mid = float(_rib_curve(rib_y, bend, np.array(start + 0.02, dtype=np.float32), cx))
    mask = (np.abs(a.canvas.x - (start + 0.03)) <= 0.045) & (np.abs(a.canvas.y - y_mid) <= 0.035)
    a.rib_layer = np.where(mask, broken, before).astype(np.float32)
    return mask


def _support_devices(a: Anatomy, side: int, rng: np.random.Generator) -> np.ndarray:
    centre = (a.lungs[0][0] + a.lungs[1][0]) / 2 + rng.uniform(-0.015, 0.015)
    tube = a.canvas.segment(centre, 0.0, centre + rng.uniform(-0.02, 0.02), rng.uniform(0.5, 0.6), 0.006)
    leads = np.zeros_like(tube)
    wires = np.zeros_like(tube)
    for _ in range(2):
        x, y = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.7)
        leads |= a.canvas.ellipse(x, y, 0.016, 0.016)
        wires |= a.canvas.segment(x, y, x + rng.uniform(-0.12, 0.12), y + rng.uniform(0.08, 0.15), 0.003)
    mask = tube | leads | wires
    a.extra += 0.45 * tube + 0.55 * leads + 0.3 * (wires & ~leads & ~tube)
    return mask


PAINTERS: dict[str, FindingPainter] = {
    "Enlarged Cardiomediastinum": _enlarged_cardiomediastinum,
    "Cardiomegaly": _cardiomegaly,
    "Lung Opacity": _lung_opacity,
    "Lung Lesion": _lung_lesion,
    "Edema": _edema,
    "Consolidation": _consolidation,
    "Pneumonia": _pneumonia,
    "Atelectasis": _atelectasis,
    "Pneumothorax": _pneumothorax,
    "Pleural Effusion": _pleural_effusion,
    "Pleural Other": _pleural_other,
    "Fracture": _fracture,
    "Support Devices": _support_devices,
}


def _stream(seed: int, domain: SampleDomain, image_index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, list(DOMAINS).index(domain), image_index, purpose])


def render_frontal(seed: int, domain: SampleDomain, image_index: int, findings: tuple[str, ...], sides: dict[str, int],
                   size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One frontal image (uint8) and the mask of each finding drawn on it.

    Anatomy, each finding, exposure and noise come from separate seeded streams, so leaving a
    finding out changes only that finding's pixels.
    """
    canvas = Canvas(size)
    anatomy = _anatomy(canvas, _stream(seed, domain, image_index, 0))
    masks = {}
    for position, label in enumerate(FINDINGS):
        if label in findings:
            rng = _stream(seed, domain, image_index, 10 + position)
            masks[label] = PAINTERS[label](anatomy, sides[label], rng)
    style = DOMAINS[domain]
    look = _stream(seed, domain, image_index, 1)
    contrast, brightness = look.uniform(*style.contrast), look.uniform(*style.brightness)
    gamma = look.uniform(*style.gamma)
    noise = look.normal(0, style.noise, size=canvas.x.shape).astype(np.float32)
    image = np.clip(anatomy.compose() * contrast + brightness, 0, 1) ** gamma + noise
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), masks


def render_lateral(seed: int, domain: SampleDomain, image_index: int, size: int) -> np.ndarray:
    """A lateral view: no findings drawn (frontal-only analyses never use it)."""
    canvas = Canvas(size)
    rng = _stream(seed, domain, image_index, 2)
    image = 0.08 + 0.3 * canvas.soft_ellipse(0.5, 0.55, 0.32, 0.5, edge=0.2)
    image -= 0.18 * canvas.soft_ellipse(0.48, 0.45, 0.2, 0.28, edge=0.2)
    image += 0.25 * (np.abs(canvas.x - 0.72) <= 0.03)
    image += rng.normal(0, DOMAINS[domain].noise, size=image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing the dataset
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageJob:
    index: int
    filename: str
    frontal: bool
    study: Study


def _mask_name(filename: str, label: str) -> str:
    return f"{filename.removesuffix('.dcm.png')}__{label.lower().replace(' ', '_')}.png"


def _write_image(job: ImageJob, seed: int, domain: SampleDomain, size: int, out: Path) -> tuple[DrawnRegion, ...]:
    """Draw and save one film (and its findings' masks); returns the regions drawn on it."""
    image_path = out / IMAGE_DIR / job.filename
    if not job.frontal:
        Image.fromarray(render_lateral(seed, domain, job.index, size)).save(image_path, optimize=False)
        return ()
    pixels, masks = render_frontal(seed, domain, job.index, job.study.findings, job.study.sides, size)
    Image.fromarray(pixels).save(image_path, optimize=False)
    regions = regions_of(masks)
    for region in regions:
        mask = masks[region.finding]
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / MASK_DIR / _mask_name(job.filename, region.finding))
    return regions


def _write_chunk(args: tuple[list[ImageJob], int, SampleDomain, int, str]) -> list[tuple[DrawnRegion, ...]]:
    jobs, seed, domain, size, out = args
    return [_write_image(job, seed, domain, size, Path(out)) for job in jobs]


def plan_dataset(config: SampleConfig) -> list[ImageJob]:
    """Studies, their labels and reports, and the image files to draw (frontal and a few lateral)."""
    rng = np.random.default_rng([config.seed, list(DOMAINS).index(config.domain), 7])
    per_uid = _images_per_uid(config.n, rng)
    if DOMAINS[config.domain].balanced:
        label_sets = _assign_balanced(len(per_uid), rng)
    else:
        # Counts are per image; about 5 % of studies have two images, so scale per study.
        label_sets = _assign_imbalanced(len(per_uid), len(per_uid) / IUXRAY_FRONTAL, rng)
    jobs: list[ImageJob] = []
    image_index = 0
    for position, (count, findings) in enumerate(zip(per_uid, label_sets, strict=True)):
        uid = position + 1
        study = _make_study(uid, findings, rng)
        for k in range(count):
            jobs.append(ImageJob(image_index, f"{uid}_IM-{uid:04d}-{4001 + k}.dcm.png", True, study))
            image_index += 1
        if rng.random() < 0.06:
            jobs.append(ImageJob(image_index, f"{uid}_IM-{uid:04d}-{3001}.dcm.png", False, study))
            image_index += 1
    return jobs


def write_sample(config: SampleConfig, progress: Callable[[int], None] | None = None) -> Path:
    """Write the synthetic dataset under `config.out`; returns the study CSV's path."""
    config.validate()
    out = config.out
    if (out / STUDY_CSV).exists():
        raise InputError(f"{out}: already holds a dataset ({STUDY_CSV}); choose an empty folder", parameter="out")
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    jobs = plan_dataset(config)
    chunk = 64
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    tasks = [(c, config.seed, config.domain, config.size, str(out)) for c in chunks]
    drawn: list[tuple[DrawnRegion, ...]] = []
    if config.workers > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for task, regions in zip(tasks, pool.map(_write_chunk, tasks), strict=True):
                drawn.extend(regions)
                if progress:
                    progress(len(task[0]))
    else:
        for task in tasks:
            drawn.extend(_write_chunk(task))
            if progress:
                progress(len(task[0]))
    boxes = [(job.filename, region.finding, *region.box) for job, regions in zip(jobs, drawn, strict=True)
             for region in regions]
    frontal = [job for job in jobs if job.frontal]
    studies = {job.study.uid: job.study for job in jobs}
    written, flips = flip_labels(list(studies.values()), config.label_noise, config.seed, config.domain)
    labelled = {study.uid: study for study in written}
    write_csv(out / STUDY_CSV, ["uid", "filename", *TEXT_COLUMNS, *CHEXPERT_LABELS],
               [[j.study.uid, j.filename, *(j.study.report[c] for c in TEXT_COLUMNS),
                 *(labelled[j.study.uid].values[label] for label in CHEXPERT_LABELS)] for j in frontal])
    if config.label_noise > 0:
        write_csv(out / LABEL_NOISE_CSV, ["uid", "label", "given", "true"],
                  [[flip.uid, flip.label, flip.given, flip.true] for flip in flips])
    write_csv(out / REPORTS_CSV, ["uid", "MeSH", "Problems", "image", *TEXT_COLUMNS],
               [[s.uid, ";".join(f"{PROBLEM_TERMS[f]}/{('right', 'left')[s.sides[f]]}" for f in s.findings) or "normal",
                 ";".join(PROBLEM_TERMS[f] for f in s.findings) or "normal",
                 "Xray Chest PA and Lateral", *(s.report[c] for c in TEXT_COLUMNS)] for s in studies.values()])
    write_csv(out / PROJECTIONS_CSV, ["uid", "filename", "projection"],
               [[j.study.uid, j.filename, "Frontal" if j.frontal else "Lateral"] for j in jobs])
    write_csv(out / ANNOTATIONS_CSV, ["filename", "label", "x0", "y0", "x1", "y1"],
               [list(box) for box in sorted(boxes, key=lambda b: (b[0], FINDINGS.index(b[1])))])
    _write_annotation_sets(out, [AnnotatedImage(job.filename, config.size, regions)
                                 for job, regions in zip(jobs, drawn, strict=True) if job.frontal])
    log.info("wrote %d images (%d frontal) to %s", len(jobs), len(frontal), out)
    return out / STUDY_CSV


def _write_annotation_sets(out: Path, frontal: list[AnnotatedImage]) -> None:
    """The public annotation files of the IU-Xray family's benchmarks, for the frontal films: COCO
    (`file_name` the dataset file name), RSNA Pneumonia and SIIM-ACR Pneumothorax (ids: the file stem)."""
    folder = out / ANNOTATION_SETS_DIR
    write_coco(folder / COCO_JSON, frontal, FINDINGS)
    by_stem = [AnnotatedImage(image.name.removesuffix(".dcm.png"), image.size, image.regions) for image in frontal]
    write_rsna(folder / RSNA_CSV, by_stem)
    write_siim(folder / SIIM_CSV, by_stem)


#: Where each layout's writer lives (`module:function`, imported when used): the same synthetic
#: studies and films, written as that dataset ships (`embedstore data sample --layout`).
SAMPLE_WRITERS: dict[SampleLayout, str] = {
    SampleLayout.IUXRAY: "embedstore.synthetic:write_sample",
    SampleLayout.CHEXPERT: "embedstore.datasets.chexpert:write_sample",
    SampleLayout.MIMIC_CXR: "embedstore.datasets.mimic:write_sample",
    SampleLayout.NIH14: "embedstore.datasets.nih14:write_sample",
    SampleLayout.VINDR_CXR: "embedstore.datasets.vindr:write_sample",
}


def write_layout(layout: SampleLayout, config: SampleConfig, progress: Callable[[int], None] | None = None) -> Path:
    """Write the synthetic benchmark in `layout`; returns what to pass to `embedstore ingest`."""
    import importlib

    module, name = SAMPLE_WRITERS[parse(SampleLayout, layout, "layout")].split(":")
    if config.label_noise > 0 and layout != SampleLayout.IUXRAY:
        raise InputError(f"layout {layout}: label noise is written for the iuxray layout only", parameter="layout")
    writer: Callable[[SampleConfig, Callable[[int], None] | None], Path] = getattr(importlib.import_module(module), name)
    return writer(config, progress)
