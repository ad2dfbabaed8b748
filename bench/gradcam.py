"""Grad-CAM benchmarks (figures in docs/benchmarks.md, "Grad-CAM"): map throughput against the
study's loop, and the localisation benchmark.

Speed: the study builds a `GradCAM` object and runs it for one image and one label at a time;
embedstore batches images (each with its own label target) through one hooked pass. Both run here,
in the same process, on the same run's model, images and labels, and the maps are checked equal.

Localisation: `gradcam validate` on every run given (default: every complete run of the store),
printing the pointing game on the localised findings against its chance level and against the
same model with every layer re-initialised.

Usage: .venv/bin/python bench/gradcam.py --store STORE --annotations FILE [--masks DIR] [--runs RUN...] [--maps 96]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from embedstore.cam.run import ValidateConfig, validate
from embedstore.cam.workspace import CamSettings, Workspace
from embedstore.labels import LOCALISED_GROUP
from embedstore.store import Store


def study_loop(workspace: Workspace, pairs: list[tuple[int, str]]) -> tuple[float, np.ndarray]:
    """The notebook's way: one GradCAM object and one forward/backward per (image, label)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layout = workspace.layout
    started = time.perf_counter()
    maps = []
    for sample_id, label in pairs:
        image = workspace.inputs(workspace.pixels([sample_id]))
        cam = GradCAM(model=workspace.subject.module, target_layers=[layout.layer],
                      reshape_transform=layout.reshape_transform((image.shape[-2], image.shape[-1])))
        maps.append(cam(input_tensor=image, targets=[ClassifierOutputTarget(workspace.subject.column(label))])[0])
        cam.activations_and_grads.release()
    return time.perf_counter() - started, np.stack(maps)


def batched(workspace: Workspace, pairs: list[tuple[int, str]]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    maps = np.stack([m for _, _, m, _ in workspace.maps(pairs)])
    return time.perf_counter() - started, maps


def speed(store: Store, run_id: str, n_maps: int) -> None:
    workspace = Workspace(store, run_id, CamSettings(batch_size=32))
    pairs = [(s, label) for s, row in workspace.images.items() if row.split == "test"
             for label in row.positives if label in workspace.subject.labels][:n_maps]
    workspace.pixels([s for s, _ in pairs])            # fill the tensor cache for both
    batched(workspace, pairs[:8])                      # warm both paths up (first-call costs)
    study_loop(workspace, pairs[:8])
    ours_s, ours = batched(workspace, pairs)
    theirs_s, theirs = study_loop(workspace, pairs)
    agree = float(np.abs(ours - theirs).max())
    print(f"speed ({run_id}, {len(pairs)} maps, {workspace.layout.layer_name}): study loop {theirs_s:.2f} s "
          f"({len(pairs) / theirs_s:.0f} maps/s), embedstore batched {ours_s:.2f} s ({len(pairs) / ours_s:.0f} maps/s)"
          f" → {theirs_s / ours_s:.2f}×; max |difference| between the two sets of maps {agree:.1e}")


def localisation(store: Store, run_id: str, annotations: Path, masks: Path | None, bootstrap: int) -> None:
    started = time.perf_counter()
    result = validate(store, ValidateConfig(run=run_id, annotations=annotations, masks=masks, bootstrap=bootstrap))
    seconds = time.perf_counter() - started
    rows = {(r.metric, r.label): r for r in result.rows}

    def cell(metric: str, label: str | None) -> str:
        row = rows.get((metric, label))
        return "—" if row is None else f"{row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"

    print(f"localisation ({run_id}, {result.layer}, {len(result.records)} maps, {seconds:.1f} s):")
    for label in (None, LOCALISED_GROUP, "Cardiomegaly", "Pleural Effusion", "Support Devices", "Lung Lesion",
                  "Fracture", "Pneumothorax"):
        print(f"  {label or 'all':20s} pointing {cell('gradcam.pointing_game', label):24s} "
              f"chance {cell('gradcam.pointing_chance', label):24s} "
              f"random weights {cell('gradcam.random_weights.pointing_game', label)}")
    print("  sanity: " + ", ".join(f"{s.stage} {s.spearman:.2f}" for s in result.sanity)
          + (" — FLAGGED" if result.flagged else " — passed"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--annotations", type=Path, required=True)
    parser.add_argument("--masks", type=Path)
    parser.add_argument("--runs", nargs="*", default=None)
    parser.add_argument("--maps", type=int, default=96, help="maps timed in the speed comparison")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    store = Store.open(args.store)
    with store.reader() as con:
        runs = args.runs or [r[0] for r in con.execute(
            "SELECT run_id FROM runs WHERE status = 'complete' ORDER BY started_at").fetchall()]
    speed(store, runs[-1], args.maps)
    for run_id in runs:
        localisation(store, run_id, args.annotations, args.masks, args.bootstrap)


if __name__ == "__main__":
    main()
