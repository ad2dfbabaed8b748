"""One stored run made ready for maps: its subject (model and scorer), its dataset's images at the
model's input, the hook layer (given, or selected on val images by deletion AUC), maps in batches,
and the provenance every written map carries. Both `gradcam` and `gradcam validate` work on one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedstore import queries
from embedstore.analyses.rundata import RunData, load_run
from embedstore.annotations import InputGeometry
from embedstore.cam.faithfulness import faithfulness
from embedstore.cam.layouts import CamLayout, cam_layout, candidate_layers
from embedstore.cam.methods import compute_maps
from embedstore.cam.subject import CamSubject, load_subject
from embedstore.choices import CamMethod, Device, Split, parse
from embedstore.errors import InputError
from embedstore.images import CachedImages, ImageItem, TensorCache, image_size, normalize, shown
from embedstore.paths import default_cache_path
from embedstore.store import Store

if TYPE_CHECKING:
    import torch

    from embedstore.annotation_sets import Region

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CamSettings:
    """What both commands share: method, hook layer (or selection on val), device, batching, seed."""

    method: CamMethod = CamMethod.GRADCAM
    layer: str = "auto"
    select_layer: bool = False
    select_maps: int = 24
    steps: int = 16
    device: Device = Device.AUTO
    batch_size: int = 16
    seed: int = 42

    def validate(self) -> None:
        """Refuse values no map can be made with, naming the value."""
        parse(CamMethod, self.method, "method")
        parse(Device, self.device, "device")
        for name, value, least in (("select_maps", self.select_maps, 1), ("steps", self.steps, 2),
                                   ("batch_size", self.batch_size, 1)):
            if value < least:
                raise InputError(f"{name} {value}: must be at least {least}", parameter=name)
        if self.select_layer and self.layer != "auto":
            raise InputError(f"layer {self.layer!r}: the layer selection picks the layer itself; leave the layer "
                             "at auto when selecting", parameter="layer")


@dataclass(frozen=True)
class ImageRow:
    """One image of a run's dataset: where it is, its split and its positive labels."""

    sample_id: int
    filename: str
    path: str
    sha256: str
    split: str
    positives: tuple[str, ...]


def run_images(store: Store, run_id: str) -> dict[int, ImageRow]:
    """The images of a run's dataset by sample id (read without loading the model)."""
    with store.reader() as con:
        rows = queries.fetch(con, "gradcam_images", run_id=run_id)
    return {int(r[0]): ImageRow(int(r[0]), r[1], r[2], r[3], r[4], tuple(r[5])) for r in rows}


def study_sample(count: int, n: int, seed: int) -> np.ndarray:
    """Row positions of pandas' `frame.sample(n=n, random_state=seed)` on a frame of `count` rows
    (the study's `test_df.sample(n=15, random_state=42)`): RandomState(seed).choice without replacement."""
    if n > count:
        raise InputError(f"n {n}: the split has only {count} images", parameter="n")
    return np.random.RandomState(seed).choice(count, size=n, replace=False)


class Workspace:
    """One run made runnable: its model and scorer, its data, its images at the model's input."""

    def __init__(self, store: Store, run_id: str, settings: CamSettings, run: RunData | None = None,
                 images: dict[int, ImageRow] | None = None) -> None:
        from embedstore.extract import resolve_device

        settings.validate()
        self.store = store
        self.settings = settings
        self.device: torch.device = resolve_device(settings.device)
        self.run: RunData = run or load_run(store, run_id)
        self.images = images or run_images(store, run_id)
        self.subject: CamSubject = load_subject(store, run_id, self.device)
        self._cache = TensorCache(default_cache_path(), self.subject.loaded.preprocess_key)
        self.layer_selection: dict[str, float] = {}
        self._geometries: dict[int, InputGeometry] = {}
        self.layout = self._layout()

    def pixels(self, sample_ids: Sequence[int]) -> np.ndarray:
        """uint8 N × C × H × W: the images as the model sees them (resized and cropped)."""
        items = [ImageItem(s, self.images[s].path, self.images[s].sha256) for s in sample_ids]
        dataset = CachedImages(items, self._cache, self.subject.loaded.pixel_transform)
        return np.stack([dataset[i][1].numpy() for i in range(len(items))])

    def input_mask(self, sample_id: int, annotation: Region) -> np.ndarray:
        """An annotation of one of the dataset's images, on the pixels the model sees."""
        return annotation.input_mask(self.geometry(sample_id))

    def geometry(self, sample_id: int) -> InputGeometry:
        """How an image's original pixels reach the model's input (its header read once per image: an
        image may carry many readers' regions)."""
        if sample_id not in self._geometries:
            path = self.images[sample_id].path
            try:
                original = image_size(path)
            except InputError as error:
                raise InputError(f"image {shown(path)} (sample {sample_id}) {error}") from None
            self._geometries[sample_id] = InputGeometry.from_transform(self.subject.loaded.pixel_transform, original)
        return self._geometries[sample_id]

    def inputs(self, pixels: np.ndarray) -> torch.Tensor:
        """Normalised model inputs on the workspace's device."""
        import torch

        loaded = self.subject.loaded
        return normalize(torch.from_numpy(pixels), loaded.mean, loaded.std, self.device).contiguous()

    def maps(self, pairs: Sequence[tuple[int, str]], layout: CamLayout | None = None,
             module: torch.nn.Module | None = None, advance: Callable[[int], None] | None = None,
             column: Callable[[str], int] | None = None) -> Iterator[tuple[int, str, np.ndarray, torch.Tensor]]:
        """(sample, target, map, model input) for each pair, computed in batches; a target is a label
        (the run's scorer column) unless `module` and `column` name another scorer's outputs."""
        layout = layout or self.layout
        module = module or self.subject.module
        column = column or self.subject.column
        size = self.settings.batch_size
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            images = self.inputs(self.pixels([s for s, _ in chunk]))
            maps = compute_maps(module, layout, images, [column(label) for _, label in chunk],
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
        log.info("layer selection: %s (mean deletion AUC on %d val maps: %s)", best, len(pairs),
                 ", ".join(f"{k} {v:.3f}" for k, v in self.layer_selection.items()))
        return cam_layout(visual, best)

    def val_pairs(self) -> list[tuple[int, str]]:
        """Up to `select_maps` (val image, positive label) pairs, seeded: what the layer selection scores."""
        pairs = [(s, label) for s, row in self.images.items() if row.split == Split.VAL
                 for label in row.positives if label in self.subject.labels]
        if not pairs:
            raise InputError(f"layer selection: run {self.subject.run_id} has no val images with positive labels",
                             parameter="select_layer")
        rng = np.random.default_rng(self.settings.seed)
        chosen = rng.choice(len(pairs), size=min(self.settings.select_maps, len(pairs)), replace=False)
        return [pairs[i] for i in sorted(chosen)]

    def provenance(self) -> dict[str, Any]:
        """What the maps depend on: the run (and so model, weights, dataset, protocol, prompts), method,
        layer, seed, device and library versions."""
        from embedstore.extract import describe_device, library_versions

        with self.store.reader() as con:
            row = queries.fetch(con, "run_overview", run_id=self.subject.run_id)[0]
        selection = {name: (value if np.isfinite(value) else None) for name, value in self.layer_selection.items()}
        return {
            "run_id": self.subject.run_id, "mode": self.subject.mode, "protocol": self.subject.protocol,
            "model_id": row[4], "model_sha256": row[5], "prompt_set": row[3], "prompts": self.run.config.get("prompts"),
            "dataset": row[7], "dataset_manifest_sha256": row[8], "method": str(self.settings.method),
            "layer": self.layout.layer_name, "layer_selection": selection or None, "seed": self.settings.seed,
            "device": describe_device(self.device), "versions": library_versions(),
        }
