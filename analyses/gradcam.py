"""`embedstore gradcam` and `embedstore gradcam validate`: maps for chosen images and labels of one
or more runs (overlays, raw maps, the study's labels × settings grid), and their validation against
expert annotations (localisation, faithfulness, model-randomisation sanity check).

The one analysis that loads a model: it re-runs a run's image tower (fine-tuned weights for ft)
with the run's own scorer on top, so each map explains exactly the score the run stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from embedstore.analyses.common import AnalysisOptions, MetricRow, metrics_table
from embedstore.analyses.localisation import MapRecord, localisation_table, map_figures, summarise
from embedstore.analyses.rundata import RunData, load_run

from embedstore import queries
from embedstore.annotations import Annotation, InputGeometry, read_annotations
from embedstore.atomic import atomic_path, save_npy, sha256_file
from embedstore.errors import InputError
from embedstore.gradcam import (
    CamLayout,
    CamSubject,
    cam_layout,
    candidate_layers,
    check_method,
    compute_maps,
    faithfulness,
    load_subject,
    randomisation_stages,
    randomise,
    randomised_copy,
)
from embedstore.images import CachedImages, ImageItem, TensorCache, image_size, normalize, shown
from embedstore.paths import default_cache_path
from embedstore.store import Store, append_rows

log = logging.getLogger(__name__)

Progress = Callable[[int, str], Callable[[int], None]]

#: Pointing-game tolerance of Zhang et al. (15 px at 224 px input), scaled to the model's input side.
POINTING_TOLERANCE_AT_224 = 15.0

#: A method whose maps keep at least this Spearman correlation with the trained model's maps once
#: every layer is re-initialised is flagged: its maps do not depend on what the model learnt.
SANITY_FLAG_RHO = 0.5


@dataclass(frozen=True)
class CamSettings:
    """What both commands share: method, hook layer (or selection on val), device, batching, seed."""

    method: str = "gradcam"
    layer: str = "auto"
    select_layer: bool = False
    select_maps: int = 24
    steps: int = 16
    device: str = "auto"
    batch_size: int = 16
    seed: int = 42

    def validate(self) -> None:
        check_method(self.method)
        for value, option, least in ((self.select_maps, "--select-maps", 1), (self.steps, "--steps", 2),
                                     (self.batch_size, "--batch-size", 1)):
            if value < least:
                raise InputError(f"{option} {value}: must be at least {least}")
        if self.select_layer and self.layer != "auto":
            raise InputError("--select-layer picks the layer itself; do not pass --layer with it")


@dataclass(frozen=True)
class MapsConfig:
    """Options of `embedstore gradcam`."""

    runs: tuple[str, ...]
    out: Path
    samples: tuple[int, ...] = ()
    n: int = 15
    split: str = "test"
    labels: tuple[str, ...] = ()
    top_k: int | None = None
    annotations: Path | None = None
    masks: Path | None = None
    settings: CamSettings = field(default_factory=CamSettings)


@dataclass(frozen=True)
class ValidateConfig:
    """Options of `embedstore gradcam validate`."""

    run: str
    annotations: Path
    masks: Path | None = None
    split: str = "test"
    n: int | None = None
    top_fraction: float | None = None
    tolerance: float | None = None
    bootstrap: int = 1000
    sanity_maps: int = 16
    settings: CamSettings = field(default_factory=CamSettings)


# ---------------------------------------------------------------------------------------------
# Shared: images, the hook layer, maps in batches
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageRow:
    sample_id: int
    filename: str
    path: str
    sha256: str
    split: str
    positives: tuple[str, ...]


def run_images(store: Store, run_id: str) -> dict[int, ImageRow]:
    """The images of a run's dataset by sample id (read without loading the model)."""
    with store.reader() as con:
        rows = con.execute(queries.load("gradcam_images").text, {"run_id": run_id}).fetchall()
    return {int(r[0]): ImageRow(int(r[0]), r[1], r[2], r[3], r[4], tuple(r[5])) for r in rows}


class Workspace:
    """One run made runnable: its model and scorer, its data, its images at the model's input."""

    def __init__(self, store: Store, run_id: str, settings: CamSettings, run: RunData | None = None,
                 images: dict[int, ImageRow] | None = None) -> None:
        from embedstore.extract import resolve_device

        settings.validate()
        self.store = store
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.run: RunData = run or load_run(store, run_id)
        self.images = images or run_images(store, run_id)
        self.subject: CamSubject = load_subject(store, run_id, self.device)
        self._cache = TensorCache(default_cache_path(), self.subject.loaded.preprocess_key)
        self.layer_selection: dict[str, float] = {}
        self.layout = self._layout()

    def pixels(self, sample_ids: Sequence[int]) -> np.ndarray:
        """uint8 N × C × H × W: the images as the model sees them (resized and cropped)."""
        items = [ImageItem(s, self.images[s].path, self.images[s].sha256) for s in sample_ids]
        dataset = CachedImages(items, self._cache, self.subject.loaded.pixel_transform)
        return np.stack([dataset[i][1].numpy() for i in range(len(items))])

    def input_mask(self, sample_id: int, annotation: Annotation) -> np.ndarray:
        """An annotation of one of the dataset's images, on the pixels the model sees."""
        path = self.images[sample_id].path
        try:
            original = image_size(path)
        except InputError as error:
            raise InputError(f"image {shown(path)} (sample {sample_id}) {error}") from None
        return annotation.input_mask(InputGeometry.from_transform(self.subject.loaded.pixel_transform, original))

    def inputs(self, pixels: np.ndarray) -> Any:
        import torch

        loaded = self.subject.loaded
        return normalize(torch.from_numpy(pixels), loaded.mean, loaded.std, self.device).contiguous()

    def maps(self, pairs: Sequence[tuple[int, str]], layout: CamLayout | None = None, module: Any = None,
             advance: Callable[[int], None] | None = None) -> Iterator[tuple[int, str, np.ndarray, Any]]:
        """(sample, label, map, model input) for each pair, computed in batches."""
        layout = layout or self.layout
        module = module or self.subject.module
        size = self.settings.batch_size
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            images = self.inputs(self.pixels([s for s, _ in chunk]))
            maps = compute_maps(module, layout, images, [self.subject.column(label) for _, label in chunk],
                                self.settings.method)
            for k, (sample_id, label) in enumerate(chunk):
                yield sample_id, label, maps[k], images[k:k + 1]
            if advance:
                advance(len(chunk))

    def deletion_auc(self, pairs: Sequence[tuple[int, str]], layout: CamLayout) -> float:
        """Mean deletion AUC of the maps at `layout` (lower: the map finds what the score depends on);
        infinite where every map is flat (the layer does not reach the score, e.g. the last block's
        patch tokens under class-token pooling), so such a layer is never selected."""
        values, flat = [], 0
        for _, label, cam, image in self.maps(pairs, layout):
            flat += int(np.ptp(cam) == 0)
            values.append(faithfulness(self.subject.module, image, cam, self.subject.column(label),
                                       self.subject.probabilities, self.settings.steps)[0])
        return float("inf") if flat == len(values) else float(np.mean(values))

    def _layout(self) -> CamLayout:
        visual = self.subject.visual
        if not self.settings.select_layer:
            return cam_layout(visual, self.settings.layer)
        pairs = self.val_pairs()
        for name in candidate_layers(visual):
            self.layer_selection[name] = self.deletion_auc(pairs, cam_layout(visual, name))
        best = min(self.layer_selection, key=lambda name: self.layer_selection[name])
        log.info("--select-layer: %s (mean deletion AUC on %d val maps: %s)", best, len(pairs),
                 ", ".join(f"{k} {v:.3f}" for k, v in self.layer_selection.items()))
        return cam_layout(visual, best)

    def val_pairs(self) -> list[tuple[int, str]]:
        """Up to `select_maps` (val image, positive label) pairs, seeded: what `--select-layer` scores."""
        pairs = [(s, label) for s, row in self.images.items() if row.split == "val"
                 for label in row.positives if label in self.subject.labels]
        if not pairs:
            raise InputError(f"--select-layer: run {self.subject.run_id} has no val images with positive labels")
        rng = np.random.default_rng(self.settings.seed)
        chosen = rng.choice(len(pairs), size=min(self.settings.select_maps, len(pairs)), replace=False)
        return [pairs[i] for i in sorted(chosen)]

    def provenance(self) -> dict[str, Any]:
        """What the maps depend on: the run (and so model, weights, dataset, protocol, prompts), method,
        layer, seed, device and library versions."""
        from embedstore.extract import describe_device, library_versions

        with self.store.reader() as con:
            row = con.execute(queries.load("run_overview").text, {"run_id": self.subject.run_id}).fetchall()[0]
        selection = {name: (value if np.isfinite(value) else None) for name, value in self.layer_selection.items()}
        return {
            "run_id": self.subject.run_id, "mode": self.subject.mode, "protocol": self.subject.protocol,
            "model_id": row[4], "model_sha256": row[5], "prompt_set": row[3], "prompts": self.run.config.get("prompts"),
            "dataset": row[7], "dataset_manifest_sha256": row[8], "method": self.settings.method,
            "layer": self.layout.layer_name, "layer_selection": selection or None, "seed": self.settings.seed,
            "device": describe_device(self.device), "versions": library_versions(),
        }


def study_sample(count: int, n: int, seed: int) -> np.ndarray:
    """Row positions of pandas' `frame.sample(n=n, random_state=seed)` on a frame of `count` rows
    (the study's `test_df.sample(n=15, random_state=42)`): RandomState(seed).choice without replacement."""
    if n > count:
        raise InputError(f"--n {n}: the split has only {count} images")
    return np.random.RandomState(seed).choice(count, size=n, replace=False)


# ---------------------------------------------------------------------------------------------
# `embedstore gradcam`: overlays, raw maps, the grid figure
# ---------------------------------------------------------------------------------------------

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
            raise InputError(f"--samples {unknown[0]}: not a sample of run {first.subject.run_id}'s dataset")
        return list(config.samples)
    in_split = [s for s, row in first.images.items() if row.split == config.split]
    if not in_split:
        raise InputError(f"--split {config.split}: the dataset has no images in that split")
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
    """With `--annotations`: each annotated (image, label)'s region on the model's input, to outline."""
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


def _overlay(pixels: np.ndarray, cam_map: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The map over the image the model saw; the expert's region outlined in white when given."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = pixels.transpose(1, 2, 0).astype(np.float32) / 255.0
    overlay = np.ascontiguousarray(show_cam_on_image(rgb, cam_map, use_rgb=True))
    if region is not None and region.any():
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    return overlay


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _grid_figure(path: Path, title: str, labels: list[str], columns: list[str],
                 panels: dict[tuple[str, str], tuple[np.ndarray, str]]) -> None:
    """The study's figure: one row per label, one column per setting, the label's score in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(labels), len(columns), figsize=(2.6 * len(columns), 3.0 * len(labels) + 0.4),
                                squeeze=False)
    for i, label in enumerate(labels):
        for j, column in enumerate(columns):
            axis = axes[i][j]
            image, caption = panels[(label, column)]
            axis.imshow(image)
            axis.set_title(f"{column}\n{label}: {caption}", fontsize=8)
            axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path, durable=False) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def render_maps(store: Store, config: MapsConfig, progress: Progress | None = None) -> MapsResult:
    """Maps of every chosen (image, label) under every run, written under `config.out`:
    `<sample>/<run>/<label>.png` (overlay) and `.npy` (raw map), `<sample>/grid.png`, `provenance.json`."""
    from embedstore.outputs import check_output_path

    check_output_path(store, config.out, folder=True)
    if not config.runs:
        raise InputError("--run: name at least one run")
    if config.top_k is not None and config.top_k < 1:
        raise InputError(f"--top-k {config.top_k}: must be at least 1")
    workspaces = [Workspace(store, run_id, config.settings) for run_id in config.runs]
    first = workspaces[0]
    for other in workspaces[1:]:
        if other.subject.dataset_id != first.subject.dataset_id:
            raise InputError(f"--run {other.subject.run_id}: a different dataset from {first.subject.run_id}")
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
            overlay = _overlay(pixels[sample_id], cam_map, outlines.get((sample_id, label)))
            _save_png(folder / f"{_slug(label)}.png", overlay)
            save_npy(folder / f"{_slug(label)}.npy", cam_map)
            row = int(np.searchsorted(workspace.run.sample_ids, sample_id))
            value = workspace.subject.probabilities(workspace.run.scores[row][None, :])[0, workspace.subject.column(label)]
            panels[sample_id][(label, column)] = (overlay, f"p={value:.2f}")
            n_maps += 1
    for sample_id in samples:
        image = first.images[sample_id]
        truth = ", ".join(image.positives) or "none"
        if outlines:
            truth += " (white outline: annotation)"
        path = config.out / str(sample_id) / "grid.png"
        _grid_figure(path, f"sample {sample_id} · {image.filename} · truth: {truth}", wanted[sample_id], columns,
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
class SanityStage:
    """Mean Spearman correlation between trained and randomised maps once `stage` (and every stage above it) is redrawn."""

    stage: str
    spearman: float
    n_maps: int


@dataclass
class ValidateResult:
    run_id: str
    layer: str
    records: list[MapRecord]
    random_records: list[MapRecord]
    rows: list[MetricRow]
    sanity: list[SanityStage]
    flagged: bool
    table: pl.DataFrame = field(default_factory=pl.DataFrame)


@dataclass(frozen=True)
class AnnotatedPair:
    """One annotated (image, label) of the validated split, with its region on the model's input."""

    sample_id: int
    label: str
    annotation: Annotation
    region: np.ndarray


def _annotated_pairs(workspace: Workspace, annotations: list[Annotation], config: ValidateConfig
                     ) -> tuple[list[AnnotatedPair], int]:
    """The split's annotations (`--n`: on N images drawn as the study did), each with its region on the
    model's input; one that the model's centre crop cuts away entirely is left out with a warning."""
    by_file = {row.filename: s for s, row in workspace.images.items()}
    chosen = [a for a in annotations if workspace.images[by_file[a.filename]].split == config.split]
    if not chosen:
        raise InputError(f"--annotations {config.annotations}: no annotation falls on a {config.split}-split image")
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


def _localise(workspace: Workspace, pairs: list[AnnotatedPair], config: ValidateConfig, module: Any,
              layout: CamLayout, with_faithfulness: bool, advance: Callable[[int], None] | None
              ) -> tuple[list[MapRecord], list[np.ndarray]]:
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


def pointing_tolerance(config: ValidateConfig, input_side: int) -> float:
    """`--tolerance`, else Zhang et al.'s 15 px at 224 px scaled to the model's input."""
    if config.tolerance is not None:
        return config.tolerance
    return POINTING_TOLERANCE_AT_224 * input_side / 224.0


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a.reshape(-1), b.reshape(-1)).statistic)


def _sanity(workspace: Workspace, pairs: list[AnnotatedPair], trained: list[np.ndarray],
            config: ValidateConfig) -> tuple[list[SanityStage], Any]:
    """Cascading randomisation (Adebayo et al. 2018): redraw the stages top-down, one more each step,
    and compare each step's maps with the trained model's. Returns the stages and the fully randomised model."""
    import torch

    module = randomised_copy(workspace.subject.module)
    generator = torch.Generator().manual_seed(config.settings.seed)
    subset = list(range(min(config.sanity_maps, len(pairs))))
    stages = []
    for name, parameters in randomisation_stages(module):
        randomise(parameters, generator)
        layout = cam_layout(module.visual, workspace.layout.layer_name)
        maps = [m for _, _, m, _ in workspace.maps([(pairs[i].sample_id, pairs[i].label) for i in subset], layout,
                                                    module)]
        rhos = np.array([_spearman(trained[i], m) for i, m in zip(subset, maps, strict=True)])
        finite = rhos[np.isfinite(rhos)]
        stages.append(SanityStage(name, float(finite.mean()) if len(finite) else float("nan"), int(len(finite))))
    return stages, module


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


def validate(store: Store, config: ValidateConfig, progress: Progress | None = None) -> ValidateResult:
    """Maps for every annotated (image, label) of the split; localisation and faithfulness figures per
    map into `gradcam`, their summaries with bootstrap intervals (trained model, random weights,
    sanity check) into `metrics`. Re-validating the same run, method and split replaces them."""
    if config.top_fraction is not None and not 0 < config.top_fraction < 1:
        raise InputError(f"--top-p {config.top_fraction}: must be between 0 and 1")
    if config.tolerance is not None and config.tolerance < 0:
        raise InputError(f"--tolerance {config.tolerance}: must be 0 or more pixels")
    if config.bootstrap < 0 or config.sanity_maps < 1:
        raise InputError("--bootstrap must be 0 or more and --sanity-maps at least 1")
    run = load_run(store, config.run)        # checked before the model loads, so a bad file fails fast
    images = run_images(store, config.run)
    annotations = read_annotations(config.annotations, {row.filename for row in images.values()}, run.labels,
                                   config.masks)
    workspace = Workspace(store, config.run, config.settings, run, images)
    pairs, left_out = _annotated_pairs(workspace, annotations, config)
    if not pairs:
        raise InputError(f"--annotations {config.annotations}: every {config.split}-split annotation lies outside "
                         "what the model sees")
    advance = progress(2 * len(pairs), "grad-cam validate") if progress else None
    records, trained = _localise(workspace, pairs, config, workspace.subject.module, workspace.layout, True, advance)
    sanity, random_module = _sanity(workspace, pairs, trained, config)
    random_records, _ = _localise(workspace, pairs, config, random_module,
                                  cam_layout(random_module.visual, workspace.layout.layer_name), False, advance)
    final = sanity[-1].spearman if sanity else float("nan")
    flagged = bool(np.isfinite(final) and final >= SANITY_FLAG_RHO)
    params = workspace.provenance() | {
        "split": config.split, "annotations": str(config.annotations),
        "annotations_sha256": sha256_file(config.annotations), "masks": str(config.masks) if config.masks else None,
        "top_fraction": config.top_fraction or "annotation area", "steps": config.settings.steps,
        "pointing_tolerance_px": pointing_tolerance(config, workspace.subject.loaded.image_size),
        "bootstrap": config.bootstrap, "annotations_outside_input": left_out,
    }
    options = AnalysisOptions(protocol=workspace.subject.protocol, split=config.split, bootstrap=config.bootstrap,
                              seed=config.settings.seed)
    rows = summarise(records, options, "gradcam.", params)
    rows += [r for r in summarise(random_records, options, "gradcam.random_weights.", params | {"weights": "randomised"})
             if r.metric.split(".")[-1] in ("pointing_game", "energy_inside", "iou_top")]
    rows += [MetricRow("gradcam.sanity_spearman", s.spearman, s.stage, params=params | {"step": k, "n_maps": s.n_maps})
             for k, s in enumerate(sanity, start=1) if np.isfinite(s.spearman)]
    rows.append(MetricRow("gradcam.sanity_flag", float(flagged), None, params=params | {"threshold": SANITY_FLAG_RHO}))
    with store.writer(f"embedstore gradcam validate ({config.run})") as writer, writer.transaction() as con:
        queries.execute_all(con, "clear_gradcam", {"run_id": config.run, "method": config.settings.method,
                                                   "split": config.split})
        append_rows(con, "gradcam", _gradcam_rows(config.run, config.settings.method, workspace.layout.layer_name,
                                                  records))
        append_rows(con, "metrics", metrics_table([(config.run, workspace.subject.protocol, config.split, r)
                                                   for r in rows]))
    return ValidateResult(config.run, workspace.layout.layer_name, records, random_records, rows, sanity, flagged,
                          localisation_table(rows))
