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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pyarrow as pa

from embedstore import queries
from embedstore.analyses.common import AnalysisOptions, MetricRow, metrics_table
from embedstore.analyses.localisation import (
    HeldOutRecord,
    MapRecord,
    human_ceiling_rows,
    localised_labels,
    map_figures,
    summarise,
)
from embedstore.analyses.rundata import load_run
from embedstore.analyses.segmentation import size_cuts
from embedstore.atomic import atomic_path, save_npy
from embedstore.cam.chexlocalize import Thresholds, held_out_records, segmentation_figures, tune_thresholds
from embedstore.cam.faithfulness import faithfulness
from embedstore.cam.grounding import (
    PhraseRecord,
    PhraseScorer,
    grounding_rows,
    phrase_embedding_rows,
    phrase_record,
    phrase_scorer,
)
from embedstore.cam.layouts import CamLayout, cam_layout
from embedstore.cam.sanity import SANITY_FLAG_RHO, SanityStage, cascading_randomisation, flagged
from embedstore.cam.targets import Target, split_targets
from embedstore.cam.workspace import CamSettings, Workspace, run_images, study_sample
from embedstore.choices import AnnotationFormat, Mode, Protocol, Split, parse
from embedstore.errors import InputError
from embedstore.store import Store, append_rows

if TYPE_CHECKING:
    import torch

    from embedstore.annotation_sets import AnnotationSet

log = logging.getLogger(__name__)

Progress = Callable[[int, str], Callable[[int], None]]

#: Pointing-game tolerance of Zhang et al. (15 px at 224 px input), scaled to the model's input side.
POINTING_TOLERANCE_AT_224 = 15.0


def as_paths(annotations: Path | Sequence[Path] | None) -> tuple[Path, ...]:
    """One annotation path, several (several readers' files), or none, as a tuple."""
    if annotations is None:
        return ()
    return (annotations,) if isinstance(annotations, Path) else tuple(annotations)


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
    annotations: Path | tuple[Path, ...] | None = ()
    masks: Path | None = None
    settings: CamSettings = field(default_factory=CamSettings)
    annotations_format: AnnotationFormat = AnnotationFormat.AUTO

    @property
    def annotation_paths(self) -> tuple[Path, ...]:
        return as_paths(self.annotations)


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


def _outlines(workspace: Workspace, config: MapsConfig) -> tuple[dict[tuple[int, str], np.ndarray], dict[str, str]]:
    """With annotations: each annotated (image, label)'s region on the model's input (every reader's
    regions together), to outline, and the annotation files' sha256."""
    from embedstore.annotation_sets import read_annotations

    if not config.annotation_paths:
        return {}, {}
    annotations = read_annotations(config.annotation_paths, {row.filename for row in workspace.images.values()},
                                   workspace.subject.labels, config.annotations_format, config.masks)
    by_file = {row.filename: s for s, row in workspace.images.items()}
    regions: dict[tuple[int, str], np.ndarray] = {}
    for region in annotations.regions:
        key = (by_file[region.filename], region.label)
        mask = workspace.input_mask(key[0], region)
        regions[key] = regions[key] | mask if key in regions else mask
    return regions, annotations.sha256


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
    outlines, annotation_sha256 = _outlines(first, config)
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
                  "annotations": ({"paths": [str(p) for p in config.annotation_paths], "sha256": annotation_sha256,
                                   "masks": str(config.masks) if config.masks else None}
                                  if config.annotation_paths else None)}
    with atomic_path(config.out / "provenance.json", durable=False) as tmp:
        tmp.write_text(json.dumps(provenance, indent=2, default=str))
    return MapsResult(config.out, samples, grids, n_maps, {w.subject.run_id: w.layout.layer_name for w in workspaces})


# ---------------------------------------------------------------------------------------------
# `embedstore gradcam validate`
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidateConfig:
    """What to validate: one run against one or more annotation files (several files: several readers;
    boxes, masks or any published format) on one split (all annotated images, or `n` drawn as the study
    did), with the localisation, interval and sanity-check parameters and the shared settings."""

    run: str
    annotations: Path | tuple[Path, ...]
    masks: Path | None = None
    split: Split = Split.TEST
    n: int | None = None
    top_fraction: float | None = None
    tolerance: float | None = None
    bootstrap: int = 1000
    sanity_maps: int = 16
    settings: CamSettings = field(default_factory=CamSettings)
    annotations_format: AnnotationFormat = AnnotationFormat.AUTO

    @property
    def annotation_paths(self) -> tuple[Path, ...]:
        return as_paths(self.annotations)


@dataclass
class ValidateResult:
    run_id: str
    layer: str
    records: list[MapRecord]
    random_records: list[MapRecord]
    rows: list[MetricRow]
    sanity: list[SanityStage]
    flagged: bool
    held_out: list[HeldOutRecord] = field(default_factory=list)
    grounding: list[PhraseRecord] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)


def pointing_tolerance(config: ValidateConfig, input_side: int) -> float:
    """The configured tolerance, else Zhang et al.'s 15 px at 224 px scaled to the model's input."""
    if config.tolerance is not None:
        return config.tolerance
    return POINTING_TOLERANCE_AT_224 * input_side / 224.0


def _maps(workspace: Workspace, targets: Sequence[Target], module: torch.nn.Module, layout: CamLayout,
          advance: Callable[[int], None] | None) -> Iterator[tuple[Target, np.ndarray, torch.Tensor]]:
    """Each target's map under `module`, with the model input it was computed on."""
    for (_, _, cam_map, image), target in zip(workspace.maps([(t.sample_id, t.label) for t in targets], layout, module,
                                                             advance), targets, strict=True):
        if target.region.shape != cam_map.shape:
            raise InputError(f"{target.source}: the annotation maps to {target.region.shape} pixels, the model's "
                             f"input is {cam_map.shape}")
        yield target, cam_map, image


def _localise(workspace: Workspace, targets: Sequence[Target], config: ValidateConfig, module: torch.nn.Module,
              layout: CamLayout, with_faithfulness: bool, advance: Callable[[int], None] | None
              ) -> tuple[list[MapRecord], list[np.ndarray]]:
    """Each target's map under `module` and its localisation figures (and, when asked, faithfulness)."""
    records, maps = [], []
    rng = np.random.default_rng(config.settings.seed)
    tolerance = pointing_tolerance(config, workspace.subject.loaded.image_size)
    for target, cam_map, image in _maps(workspace, targets, module, layout, advance):
        deletion = insertion = None
        if with_faithfulness:
            deletion, insertion = faithfulness(module, image, cam_map, workspace.subject.column(target.label),
                                               workspace.subject.probabilities, config.settings.steps)
        figures = map_figures(cam_map, target.region, rng, config.top_fraction, tolerance)
        records.append(MapRecord(target.sample_id, target.label, figures, deletion, insertion))
        maps.append(cam_map)
    return records, maps


def _segmented(records: list[MapRecord], maps: Sequence[np.ndarray], targets: Sequence[Target],
               thresholds: Thresholds, cuts: tuple[float, float], seed: int) -> list[MapRecord]:
    """The records with CheXlocalize's figures added."""
    rng = np.random.default_rng([seed, 1])
    return [replace(record, segmentation=segmentation_figures(cam_map, target.region, thresholds.of(target.label), cuts,
                                                              rng))
            for record, cam_map, target in zip(records, maps, targets, strict=True)]


def _sanity(workspace: Workspace, targets: Sequence[Target], trained: list[np.ndarray],
            config: ValidateConfig) -> tuple[list[SanityStage], torch.nn.Module]:
    """The cascading randomisation on the first `sanity_maps` targets."""
    subset = [(t.sample_id, t.label) for t in targets[:config.sanity_maps]]

    def maps_of(module: torch.nn.Module, layout: CamLayout) -> list[np.ndarray]:
        return [m for _, _, m, _ in workspace.maps(subset, layout, module)]

    return cascading_randomisation(workspace.subject.module, workspace.layout.layer_name, trained[:len(subset)],
                                   maps_of, config.settings.seed)


def _thresholds(workspace: Workspace, annotations: AnnotationSet, split: Split, targets: list[Target],
                trained: list[np.ndarray], n: int | None) -> Thresholds:
    """Each label's threshold tuned on the val split's annotated maps (`n`: of N val images drawn as
    the study did; the validated split's own maps when it is val), Otsu's per map for labels val has
    no annotation of."""
    if split == Split.VAL:
        return tune_thresholds(targets, trained, in_sample=True)
    val_targets, _ = split_targets(workspace, annotations, Split.VAL, n, workspace.settings.seed)
    val_maps = [m for _, m, _ in _maps(workspace, val_targets, workspace.subject.module, workspace.layout, None)]
    return tune_thresholds(val_targets, val_maps, in_sample=False)


def _grounding(workspace: Workspace, targets: Sequence[Target], trained: Sequence[np.ndarray], config: ValidateConfig
               ) -> tuple[list[PhraseRecord], PhraseScorer | None]:
    """Phrase grounding of a zs run: each annotated sentence's map against that sentence's region,
    beside the label map's figures on the same region (`embedstore.cam.grounding`)."""
    if workspace.subject.mode != Mode.ZS:
        return [], None
    pairs = [(target, text, region, cam_map) for target, cam_map in zip(targets, trained, strict=True)
             for text, region in target.phrases]
    if not pairs:
        return [], None
    label_of = {text: target.label for target, text, _, _ in reversed(pairs)}   # a sentence's first label
    scorer = phrase_scorer(workspace, sorted((label, text) for text, label in label_of.items()))
    rng = np.random.default_rng([config.settings.seed, 2])
    phrase_maps = workspace.maps([(t.sample_id, text) for t, text, _, _ in pairs], workspace.layout, scorer.module,
                                 column=scorer.column)
    records = [phrase_record(target.sample_id, target.label, text, region, phrase_map, label_map, rng)
               for (target, text, region, label_map), (_, _, phrase_map, _) in zip(pairs, phrase_maps, strict=True)]
    return records, scorer


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
    parse(AnnotationFormat, config.annotations_format, "annotations_format")
    if not config.annotation_paths:
        raise InputError("no annotation file: name at least one", parameter="annotations")
    if config.top_fraction is not None and not 0 < config.top_fraction < 1:
        raise InputError(f"top_fraction {config.top_fraction}: must be between 0 and 1", parameter="top_fraction")
    if config.tolerance is not None and config.tolerance < 0:
        raise InputError(f"tolerance {config.tolerance}: must be 0 or more pixels", parameter="tolerance")
    if config.bootstrap < 0:
        raise InputError(f"bootstrap {config.bootstrap}: must be 0 or more resamples", parameter="bootstrap")
    if config.sanity_maps < 1:
        raise InputError(f"sanity_maps {config.sanity_maps}: must be at least 1", parameter="sanity_maps")
    return split


def _annotation_params(config: ValidateConfig, annotations: AnnotationSet) -> dict[str, object]:
    files = [str(path) for path in config.annotation_paths]
    return {"annotations": files[0] if len(files) == 1 else files, "annotations_format": str(annotations.format),
            "annotations_sha256": (annotations.sha256[files[0]] if len(files) == 1 else annotations.sha256),
            "annotations_left_out": annotations.left_out, "masks": str(config.masks) if config.masks else None}


def validate(store: Store, config: ValidateConfig, progress: Progress | None = None) -> ValidateResult:
    """Maps for every annotated (image, label) of the split; localisation and faithfulness figures per
    map into `gradcam`, their summaries with bootstrap intervals (trained model, random weights,
    CheXlocalize's mIoU and hit rate, the human ceiling where several readers annotated an image,
    phrase grounding for zs runs, sanity check) into `metrics`. Re-validating the same run, method
    and split replaces them."""
    from embedstore.annotation_sets import read_annotations

    split = _check(config)
    run = load_run(store, config.run)        # checked before the model loads, so a bad file fails fast
    images = run_images(store, config.run)
    annotations = read_annotations(config.annotation_paths, {row.filename for row in images.values()}, run.labels,
                                   config.annotations_format, config.masks)
    workspace = Workspace(store, config.run, config.settings, run, images)
    targets, cut_away = split_targets(workspace, annotations, split, config.n, config.settings.seed)
    if not targets:
        where = "lies outside what the model sees" if cut_away else f"falls on a {split}-split image"
        raise InputError(f"{', '.join(map(str, config.annotation_paths))}: no annotation {where}",
                         parameter="annotations")
    method, layer = str(config.settings.method), workspace.layout.layer_name
    advance = progress(2 * len(targets), "grad-cam validate") if progress else None
    records, trained = _localise(workspace, targets, config, workspace.subject.module, workspace.layout, True, advance)
    thresholds = _thresholds(workspace, annotations, split, targets, trained, config.n)
    cuts = size_cuts(np.array([t.area_share for t in targets]))
    records = _segmented(records, trained, targets, thresholds, cuts, config.settings.seed)
    held_out = held_out_records(targets, trained, thresholds, config.settings.seed)
    phrases, scorer = _grounding(workspace, targets, trained, config)
    sanity, random_module = _sanity(workspace, targets, trained, config)
    random_layout = cam_layout(cast("torch.nn.Module", random_module.visual), layer)
    random_records, random_maps = _localise(workspace, targets, config, random_module, random_layout, False, advance)
    random_records = _segmented(random_records, random_maps, targets, thresholds, cuts, config.settings.seed)
    is_flagged = flagged(sanity)
    params = workspace.provenance() | _annotation_params(config, annotations) | {
        "split": str(split), "top_fraction": config.top_fraction or "annotation area", "steps": config.settings.steps,
        "pointing_tolerance_px": pointing_tolerance(config, workspace.subject.loaded.image_size),
        "bootstrap": config.bootstrap, "annotations_outside_input": cut_away,
        "size_terciles": {"small_up_to": cuts[0], "medium_up_to": cuts[1]},
        "thresholds": thresholds.params(),
    }
    options = AnalysisOptions(protocol=Protocol(workspace.subject.protocol), split=split, bootstrap=config.bootstrap,
                              seed=config.settings.seed)
    localised = localised_labels(store, run.labels)
    rows = summarise(records, options, "gradcam.", params, localised)
    rows += [r for r in summarise(random_records, options, "gradcam.random_weights.", params | {"weights": "randomised"},
                                  localised, "localisation.random_weights.")
             if r.metric.split(".")[-1] in ("pointing_game", "energy_inside", "iou_top", "miou", "hit_rate")]
    rows += thresholds.rows(params)
    if held_out:
        rows += human_ceiling_rows(held_out, options, params, localised)
    if phrases:
        rows += grounding_rows(phrases, options, params, localised)
    rows += [MetricRow("gradcam.sanity_spearman", s.spearman, s.stage, params=params | {"step": k, "n_maps": s.n_maps})
             for k, s in enumerate(sanity, start=1) if np.isfinite(s.spearman)]
    rows.append(MetricRow("gradcam.sanity_flag", float(is_flagged), None,
                          params=params | {"threshold": SANITY_FLAG_RHO}))
    with store.writer(f"embedstore gradcam validate ({config.run})") as writer, writer.transaction() as con:
        queries.execute_all(con, "clear_gradcam", {"run_id": config.run, "method": method, "split": str(split)})
        append_rows(con, "gradcam", _gradcam_rows(config.run, method, layer, records))
        append_rows(con, "metrics", metrics_table([(config.run, workspace.subject.protocol, str(split), r)
                                                   for r in rows]))
        if scorer is not None:
            stored = {(label, prompt) for label, prompt in queries.fetch(con, "run_sentences", run_id=config.run)}
            append_rows(con, "text_embeddings", phrase_embedding_rows(config.run, scorer, stored))
    return ValidateResult(config.run, layer, records, random_records, rows, sanity, is_flagged, held_out, phrases,
                          trained, targets, thresholds)
