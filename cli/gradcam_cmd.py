"""`embedstore gradcam` and `embedstore gradcam validate`."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer
from embedstore.cli.options import StoreOption, progress_factory, store_path

app = typer.Typer(help="Grad-CAM maps of stored runs, and their validation against expert annotations.")

METHOD_HELP = "gradcam, gradcam++, hirescam, scorecam or eigencam."
LAYER_HELP = ("auto (timm ViT: trunk.blocks.-3.attn.proj, the study's; open_clip ViT: transformer.resblocks.-3; "
              "CNN: the last stage) or a dotted path below the image tower.")


def _settings(method: str, layer: str, select_layer: bool, select_maps: int, steps: int, device: str, batch_size: int,
              seed: int) -> Any:
    from embedstore.analyses.gradcam import CamSettings

    return CamSettings(method=method, layer=layer, select_layer=select_layer, select_maps=select_maps, steps=steps,
                       device=device, batch_size=batch_size, seed=seed)


MethodOption = typer.Option("gradcam", "--method", help=METHOD_HELP)
LayerOption = typer.Option("auto", "--layer", help=LAYER_HELP)
SelectLayerOption = typer.Option(False, "--select-layer",
                                 help="Pick the candidate layer with the lowest mean deletion AUC on val images.")
SelectMapsOption = typer.Option(24, "--select-maps", help="--select-layer: val (image, label) maps scored per layer.")
StepsOption = typer.Option(16, "--steps", help="Deletion / insertion curve steps.")
DeviceOption = typer.Option("auto", "--device", help="auto, cpu or cuda.")
BatchOption = typer.Option(16, "--batch-size", help="Images per Grad-CAM batch.")
SeedOption = typer.Option(42, "--seed", help="Image sampling (the study: 42), tie-breaking, bootstrap.")


@app.callback(invoke_without_command=True)
def maps(
    ctx: typer.Context,
    runs: list[str] = typer.Option([], "--run", help="Run id; repeat for a labels × settings grid (same dataset)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for overlays, raw maps, grids, provenance.json."),
    samples: list[int] = typer.Option([], "--samples", help="Sample ids (default: --n images drawn from --split)."),
    n: int = typer.Option(15, "--n", help="Images drawn as the study did: frame.sample(n, random_state=seed)."),
    split: str = typer.Option("test", "--split", help="Split the images are drawn from."),
    labels: list[str] = typer.Option([], "--labels", help="Labels to map (default: each image's positive labels)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Map the K highest-scoring labels of the first run."),
    annotations: Path | None = typer.Option(None, "--annotations",
                                            help="Outline each annotated region (boxes CSV, as for validate)."),
    masks: Path | None = typer.Option(None, "--masks", help="Mask folder used instead of the boxes."),
    method: str = MethodOption,
    layer: str = LayerOption,
    select_layer: bool = SelectLayerOption,
    select_maps: int = SelectMapsOption,
    steps: int = StepsOption,
    device: str = DeviceOption,
    batch_size: int = BatchOption,
    seed: int = SeedOption,
    store: Path | None = StoreOption,
) -> None:
    """Grad-CAM maps of chosen images and labels for one or more runs: overlays (PNG), raw maps (.npy)
    and, per image, the study's grid of labels × settings with each label's score in the title."""
    if ctx.invoked_subcommand is not None:
        return
    from embedstore.analyses.gradcam import MapsConfig, render_maps

    from embedstore.errors import InputError
    from embedstore.store import Store

    if not runs or out is None:
        raise InputError("embedstore gradcam needs --run RUN and --out DIR (or the `validate` subcommand)")
    config = MapsConfig(runs=tuple(runs), out=out, samples=tuple(samples), n=n, split=split, labels=tuple(labels),
                        top_k=top_k, annotations=annotations, masks=masks,
                        settings=_settings(method, layer, select_layer, select_maps, steps, device, batch_size, seed))
    with ExitStack() as bars:
        result = render_maps(Store.open(store_path(store)), config, progress=progress_factory(bars, "map"))
    layers = ", ".join(f"{run} at {name}" for run, name in result.layers.items())
    typer.echo(f"wrote {result.n_maps} maps of {len(result.samples)} images to {result.out} ({layers})")
    for grid in result.grids:
        typer.echo(f"  {grid}")


@app.command()
def validate(
    run: str = typer.Option(..., "--run", help="Run id."),
    annotations: Path = typer.Option(..., "--annotations",
                                     help="Boxes CSV: filename,label,x0,y0,x1,y1 in original image pixels."),
    masks: Path | None = typer.Option(None, "--masks",
                                      help="Folder of masks <image stem>__<label_slug>.png, used instead of the boxes."),
    split: str = typer.Option("test", "--split", help="Validate on the annotated images of this split."),
    n: int | None = typer.Option(None, "--n", help="Only N annotated images, drawn as the study did (default: all)."),
    top_p: float | None = typer.Option(None, "--top-p",
                                       help="IoU region: this share of the pixels (default: the annotation's area)."),
    tolerance: float | None = typer.Option(None, "--tolerance",
                                           help="Pointing-game hit distance in input pixels (default: 15 px at 224, "
                                                "scaled to the model's input)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Resamples for the 95 % intervals (0: none)."),
    sanity_maps: int = typer.Option(16, "--sanity-maps", help="Maps compared at each randomisation step."),
    method: str = MethodOption,
    layer: str = LayerOption,
    select_layer: bool = SelectLayerOption,
    select_maps: int = SelectMapsOption,
    steps: int = StepsOption,
    device: str = DeviceOption,
    batch_size: int = BatchOption,
    seed: int = SeedOption,
    store: Path | None = StoreOption,
) -> None:
    """Pointing game, energy pointing game and top-p IoU against the annotations (each with its chance
    baseline and a bootstrap interval), deletion / insertion AUC, and the model-randomisation check."""
    import polars as pl
    from embedstore.analyses.gradcam import ValidateConfig
    from embedstore.analyses.gradcam import validate as run_validate

    from embedstore.store import Store

    config = ValidateConfig(run=run, annotations=annotations, masks=masks, split=split, n=n, top_fraction=top_p,
                            tolerance=tolerance, bootstrap=bootstrap, sanity_maps=sanity_maps,
                            settings=_settings(method, layer, select_layer, select_maps, steps, device, batch_size,
                                               seed))
    with ExitStack() as bars:
        result = run_validate(Store.open(store_path(store)), config, progress=progress_factory(bars, "map"))
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=250, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        typer.echo(f"run {result.run_id}, {method} at {result.layer}, {len(result.records)} annotated maps:")
        typer.echo(result.table)
    steps_text = ", ".join(f"{s.stage} {s.spearman:.2f}" for s in result.sanity)
    verdict = ("FLAGGED: the maps barely change when the model's weights are randomised" if result.flagged
               else "passed: the maps change when the model's weights are randomised")
    typer.echo(f"randomisation check (Spearman ρ trained vs randomised, top-down): {steps_text}")
    typer.echo(f"randomisation check {verdict}")
