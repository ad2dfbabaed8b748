"""The two Grad-CAM entry points: `render_maps` (`embedstore gradcam`: overlays, raw maps and the
study's labels × settings grid for chosen images and labels of one or more runs) and `validate`
(`embedstore gradcam validate`: localisation against expert annotations, faithfulness and the
model-randomisation check, stored in `gradcam` and `metrics`).

The one analysis that loads a model: it re-runs a run's image tower (fine-tuned weights for ft)
with the run's own scorer on top, so each map explains exactly the score the run stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pyarrow as pa

from embedstore import queries
from embedstore.analyses.common import AnalysisOptions, MetricRow, metrics_table
from embedstore.analyses.localisation import MapRecord, localised_labels, map_figures, summarise
from embedstore.analyses.rundata import load_run
from embedstore.annotations import Annotation, read_annotations
from embedstore.atomic import atomic_path, save_npy, sha256_file
from embedstore.cam.faithfulness import faithfulness
from embedstore.cam.layouts import CamLayout, cam_layout
from embedstore.cam.sanity import SANITY_FLAG_RHO, SanityStage, cascading_randomisation, flagged
from embedstore.cam.workspace import CamSettings, Workspace, run_images, study_sample
from embedstore.choices import Protocol, Split, parse
from embedstore.errors import InputError
from embedstore.store import Store, append_rows

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Progress = Callable[[int, str], Callable[[int], None]]

#: Pointing-game tolerance of Zhang et al. (15 px at 224 px input), scaled to the model's input side.
POINTING_TOLERANCE_AT_224 = 15.0


# ---------------------------------------------------------------------------------------------
# `embedstore gradcam`: overlays, raw maps, the grid figure
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapsConfig:
    """What to map: runs (one dataset), images (ids, or `n` drawn from `split` as the study did),
    labels (given, the first run's `top_k`, or each image's positives), optional annotations to
    outline, and the shared settings."""

    runs: tuple[str, ...]
    out: Path
    samples: tuple[int, ...] = ()
    n: int = 15
    split: Split = Split.TEST
    labels: tuple[str, ...] = ()
    top_k: int | None = None
    annotations: Path | None = None
    masks: Path | None = None
    settings: CamSettings = field(default_factory=CamSettings)


@dataclass(frozen=True)
class MapsResult:
    out: Path
    samples: list[int]
    grids: list[Path]
    n_maps: int
    layers: dict[str, str]


def _slug(label: str) -> str:
    return label.lower().replace(" ", "_")


def _choose_samples(first: Workspace, config: MapsConfig) -> list[int]:
    if config.samples:
        unknown = [s for s in config.samples if s not in first.images]
        if unknown:
            raise InputError(f"sample {unknown[0]}: not a sample of run {first.subject.run_id}'s dataset",
                             parameter="samples")
        return list(config.samples)
    split = parse(Split, config.split, "split")
    in_split = [s for s, row in first.images.items() if row.split == split]
    if not in_split:
        raise InputError(f"split {split.value!r}: the dataset has no images in that split", parameter="split")
    return [in_split[i] for i in study_sample(len(in_split), config.n, config.settings.seed)]


def _choose_labels(first: Workspace, sample_id: int, config: MapsConfig) -> list[str]:
    if config.labels:
        for label in config.labels:
            first.subject.column(label)
        return list(config.labels)
    row = int(np.searchsorted(first.run.sample_ids, sample_id))
    if config.top_k is not None:
        order = np.argsort(-first.run.scores[row], kind="stable")[:config.top_k]
        return [first.run.labels[j] for j in order]
    positives = [label for label in first.images[sample_id].positives if label in first.subject.labels]
    return positives or [first.run.labels[int(np.argmax(first.run.scores[row]))]]


def _outlines(workspace: Workspace, config: MapsConfig) -> dict[tuple[int, str], np.ndarray]:
    """With annotations: each annotated (image, label)'s region on the model's input, to outline."""
    if config.annotations is None:
        return {}
    annotations = read_annotations(config.annotations, {row.filename for row in workspace.images.values()},
                                   workspace.subject.labels, config.masks)
    by_file = {row.filename: s for s, row in workspace.images.items()}
    regions: dict[tuple[int, str], np.ndarray] = {}
    for annotation in annotations:
        key = (by_file[annotation.filename], annotation.label)
        mask = workspace.input_mask(key[0], annotation)
        regions[key] = regions[key] | mask if key in regions else mask
    return regions


def render_maps(store: Store, config: MapsConfig, progress: Progress | None = None) -> MapsResult:
    """Maps of every chosen (image, label) under every run, written under `config.out`:
    `<sample>/<run>/<label>.png` (overlay) and `.npy` (raw map), `<sample>/grid.png`, `provenance.json`."""
    from embedstore.outputs import check_output_path
    from embedstore.rendering.overlays import grid_figure, overlay, save_png

    check_output_path(store, config.out, folder=True)
    if not config.runs:
        raise InputError("no run to map: name at least one", parameter="run")
    if config.top_k is not None and config.top_k < 1:
        raise InputError(f"top_k {config.top_k}: must be at least 1", parameter="top_k")
    workspaces = [Workspace(store, run_id, config.settings) for run_id in config.runs]
    first = workspaces[0]
    for other in workspaces[1:]:
        if other.subject.dataset_id != first.subject.dataset_id:
            raise InputError(f"run {other.subject.run_id}: a different dataset from {first.subject.run_id}",
                             parameter="run")
    samples = _choose_samples(first, config)
    wanted = {s: _choose_labels(first, s, config) for s in samples}
    outlines = _outlines(first, config)
    grids, n_maps = [], 0
    total = sum(len(v) for v in wanted.values()) * len(workspaces)
    advance = progress(total, "grad-cam") if progress else None
    columns = [f"{w.subject.mode} ({w.subject.protocol})" for w in workspaces]
    panels: dict[int, dict[tuple[str, str], tuple[np.ndarray, str]]] = {s: {} for s in samples}
    for workspace, column in zip(workspaces, columns, strict=True):
        pairs = [(s, label) for s in samples for label in wanted[s]]
        pixels = {s: workspace.pixels([s])[0] for s in samples}
        for sample_id, label, cam_map, _ in workspace.maps(pairs, advance=advance):
            folder = config.out / str(sample_id) / workspace.subject.run_id
            drawn = overlay(pixels[sample_id], cam_map, outlines.get((sample_id, label)))
            save_png(folder / f"{_slug(label)}.png", drawn)
            save_npy(folder / f"{_slug(label)}.npy", cam_map)
            row = int(np.searchsorted(workspace.run.sample_ids, sample_id))
            value = workspace.subject.probabilities(workspace.run.scores[row][None, :])[0, workspace.subject.column(label)]
            panels[sample_id][(label, column)] = (drawn, f"p={value:.2f}")
            n_maps += 1
    for sample_id in samples:
        image = first.images[sample_id]
        truth = ", ".join(image.positives) or "none"
        if outlines:
            truth += " (white outline: annotation)"
        path = config.out / str(sample_id) / "grid.png"
        grid_figure(path, f"sample {sample_id} · {image.filename} · truth: {truth}", wanted[sample_id], columns,
                    panels[sample_id])
        grids.append(path)
    provenance = {"runs": [w.provenance() for w in workspaces], "samples": samples,
                  "labels": {str(s): wanted[s] for s in samples},
                  "annotations": ({"path": str(config.annotations), "sha256": sha256_file(config.annotations),
                                   "masks": str(config.masks) if config.masks else None}
                                  if config.annotations else None)}
    with atomic_path(config.out / "provenance.json", durable=False) as tmp:
        tmp.write_text(json.dumps(provenance, indent=2, default=str))
    return MapsResult(config.out, samples, grids, n_maps, {w.subject.run_id: w.layout.layer_name for w in workspaces})


# ---------------------------------------------------------------------------------------------
# `embedstore gradcam validate`
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidateConfig:
    """What to validate: one run against an annotation file (boxes, or masks) on one split (all
    annotated images, or `n` drawn as the study did), with the localisation, interval and sanity
    check parameters and the shared settings."""

    run: str
    annotations: Path
    masks: Path | None = None
    split: Split = Split.TEST
    n: int | None = None
    top_fraction: float | None = None
    tolerance: float | None = None
    bootstrap: int = 1000
    sanity_maps: int = 16
    settings: CamSettings = field(default_factory=CamSettings)


@dataclass
class ValidateResult:
    run_id: str
    layer: str
    records: list[MapRecord]
    random_records: list[MapRecord]
    rows: list[MetricRow]
    sanity: list[SanityStage]
    flagged: bool


@dataclass(frozen=True)
class AnnotatedPair:
    """One annotated (image, label) of the validated split, with its region on the model's input."""

    sample_id: int
    label: str
    annotation: Annotation
    region: np.ndarray


def _annotated_pairs(workspace: Workspace, annotations: list[Annotation], config: ValidateConfig
                     ) -> tuple[list[AnnotatedPair], int]:
    """The split's annotations (`n`: on N images drawn as the study did), each with its region on the
    model's input; one that the model's centre crop cuts away entirely is left out with a warning."""
    by_file = {row.filename: s for s, row in workspace.images.items()}
    chosen = [a for a in annotations if workspace.images[by_file[a.filename]].split == config.split]
    if not chosen:
        raise InputError(f"{config.annotations}: no annotation falls on a {config.split}-split image",
                         parameter="annotations")
    if config.n is not None:
        images = sorted({by_file[a.filename] for a in chosen})
        drawn = {images[i] for i in study_sample(len(images), min(config.n, len(images)), config.settings.seed)}
        chosen = [a for a in chosen if by_file[a.filename] in drawn]
    pairs = []
    for annotation in chosen:
        sample_id = by_file[annotation.filename]
        region = workspace.input_mask(sample_id, annotation)
        if not region.any():
            log.warning("%s:%d: the annotation lies outside what the model sees (its centre crop); left out",
                        config.annotations, annotation.row)
            continue
        pairs.append(AnnotatedPair(sample_id, annotation.label, annotation, region))
    return sorted(pairs, key=lambda p: (p.sample_id, workspace.subject.column(p.label))), len(chosen) - len(pairs)


def pointing_tolerance(config: ValidateConfig, input_side: int) -> float:
    """The configured tolerance, else Zhang et al.'s 15 px at 224 px scaled to the model's input."""
    if config.tolerance is not None:
        return config.tolerance
    return POINTING_TOLERANCE_AT_224 * input_side / 224.0


def _localise(workspace: Workspace, pairs: list[AnnotatedPair], config: ValidateConfig, module: torch.nn.Module,
              layout: CamLayout, with_faithfulness: bool, advance: Callable[[int], None] | None
              ) -> tuple[list[MapRecord], list[np.ndarray]]:
    """Each pair's map under `module` and its localisation figures (and, when asked, faithfulness)."""
    records, maps = [], []
    rng = np.random.default_rng(config.settings.seed)
    tolerance = pointing_tolerance(config, workspace.subject.loaded.image_size)
    for (sample_id, label, cam_map, image), pair in zip(
            workspace.maps([(p.sample_id, p.label) for p in pairs], layout, module, advance), pairs, strict=True):
        if pair.region.shape != cam_map.shape:
            raise InputError(f"{config.annotations}:{pair.annotation.row}: the annotation maps to "
                             f"{pair.region.shape} pixels, the model's input is {cam_map.shape}")
        deletion = insertion = None
        if with_faithfulness:
            deletion, insertion = faithfulness(module, image, cam_map, workspace.subject.column(label),
                                               workspace.subject.probabilities, config.settings.steps)
        figures = map_figures(cam_map, pair.region, rng, config.top_fraction, tolerance)
        records.append(MapRecord(sample_id, label, figures, deletion, insertion))
        maps.append(cam_map)
    return records, maps


def _sanity(workspace: Workspace, pairs: Sequence[AnnotatedPair], trained: list[np.ndarray],
            config: ValidateConfig) -> tuple[list[SanityStage], torch.nn.Module]:
    """The cascading randomisation on the first `sanity_maps` pairs."""
    subset = [(p.sample_id, p.label) for p in pairs[:config.sanity_maps]]

    def maps_of(module: torch.nn.Module, layout: CamLayout) -> list[np.ndarray]:
        return [m for _, _, m, _ in workspace.maps(subset, layout, module)]

    return cascading_randomisation(workspace.subject.module, workspace.layout.layer_name, trained[:len(subset)],
                                   maps_of, config.settings.seed)


def _gradcam_rows(run_id: str, method: str, layer: str, records: list[MapRecord]) -> pa.Table:
    from datetime import UTC, datetime

    created = datetime.now(UTC).replace(tzinfo=None)
    return pa.table({
        "run_id": pa.array([run_id] * len(records), pa.string()),
        "sample_id": pa.array([r.sample_id for r in records], pa.int64()),
        "label": pa.array([r.label for r in records], pa.string()),
        "method": pa.array([method] * len(records), pa.string()),
        "layer": pa.array([layer] * len(records), pa.string()),
        "pointing_hit": pa.array([r.figures.pointing_hit for r in records], pa.bool_()),
        "energy_inside": pa.array([r.figures.energy_inside for r in records], pa.float64()),
        "iou_top": pa.array([r.figures.iou_top for r in records], pa.float64()),
        "area_share": pa.array([r.figures.area_share for r in records], pa.float64()),
        "deletion_auc": pa.array([r.deletion_auc for r in records], pa.float64()),
        "insertion_auc": pa.array([r.insertion_auc for r in records], pa.float64()),
        "created_at": pa.array([created] * len(records), pa.timestamp("us")),
    })


def _check(config: ValidateConfig) -> Split:
    """Refuse parameters no validation can run with, naming the value; returns the split."""
    split = parse(Split, config.split, "split")
    if config.top_fraction is not None and not 0 < config.top_fraction < 1:
        raise InputError(f"top_fraction {config.top_fraction}: must be between 0 and 1", parameter="top_fraction")
    if config.tolerance is not None and config.tolerance < 0:
        raise InputError(f"tolerance {config.tolerance}: must be 0 or more pixels", parameter="tolerance")
    if config.bootstrap < 0:
        raise InputError(f"bootstrap {config.bootstrap}: must be 0 or more resamples", parameter="bootstrap")
    if config.sanity_maps < 1:
        raise InputError(f"sanity_maps {config.sanity_maps}: must be at least 1", parameter="sanity_maps")
    return split


def validate(store: Store, config: ValidateConfig, progress: Progress | None = None) -> ValidateResult:
    """Maps for every annotated (image, label) of the split; localisation and faithfulness figures per
    map into `gradcam`, their summaries with bootstrap intervals (trained model, random weights,
    sanity check) into `metrics`. Re-validating the same run, method and split replaces them."""
    split = _check(config)
    run = load_run(store, config.run)        # checked before the model loads, so a bad file fails fast
    images = run_images(store, config.run)
    annotations = read_annotations(config.annotations, {row.filename for row in images.values()}, run.labels,
                                   config.masks)
    workspace = Workspace(store, config.run, config.settings, run, images)
    pairs, left_out = _annotated_pairs(workspace, annotations, config)
    if not pairs:
        raise InputError(f"{config.annotations}: every {config.split}-split annotation lies outside what the "
                         "model sees", parameter="annotations")
    method, layer = str(config.settings.method), workspace.layout.layer_name
    advance = progress(2 * len(pairs), "grad-cam validate") if progress else None
    records, trained = _localise(workspace, pairs, config, workspace.subject.module, workspace.layout, True, advance)
    sanity, random_module = _sanity(workspace, pairs, trained, config)
    random_layout = cam_layout(cast("torch.nn.Module", random_module.visual), layer)
    random_records, _ = _localise(workspace, pairs, config, random_module, random_layout, False, advance)
    is_flagged = flagged(sanity)
    params = workspace.provenance() | {
        "split": str(split), "annotations": str(config.annotations),
        "annotations_sha256": sha256_file(config.annotations), "masks": str(config.masks) if config.masks else None,
        "top_fraction": config.top_fraction or "annotation area", "steps": config.settings.steps,
        "pointing_tolerance_px": pointing_tolerance(config, workspace.subject.loaded.image_size),
        "bootstrap": config.bootstrap, "annotations_outside_input": left_out,
    }
    options = AnalysisOptions(protocol=Protocol(workspace.subject.protocol), split=split, bootstrap=config.bootstrap,
                              seed=config.settings.seed)
    localised = localised_labels(store, run.labels)
    rows = summarise(records, options, "gradcam.", params, localised)
    rows += [r for r in summarise(random_records, options, "gradcam.random_weights.", params | {"weights": "randomised"},
                                  localised)
             if r.metric.split(".")[-1] in ("pointing_game", "energy_inside", "iou_top")]
    rows += [MetricRow("gradcam.sanity_spearman", s.spearman, s.stage, params=params | {"step": k, "n_maps": s.n_maps})
             for k, s in enumerate(sanity, start=1) if np.isfinite(s.spearman)]
    rows.append(MetricRow("gradcam.sanity_flag", float(is_flagged), None,
                          params=params | {"threshold": SANITY_FLAG_RHO}))
    with store.writer(f"embedstore gradcam validate ({config.run})") as writer, writer.transaction() as con:
        queries.execute_all(con, "clear_gradcam", {"run_id": config.run, "method": method, "split": str(split)})
        append_rows(con, "gradcam", _gradcam_rows(config.run, method, layer, records))
        append_rows(con, "metrics", metrics_table([(config.run, workspace.subject.protocol, str(split), r)
                                                   for r in rows]))
    return ValidateResult(config.run, layer, records, random_records, rows, sanity, is_flagged)
