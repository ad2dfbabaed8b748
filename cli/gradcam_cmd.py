"""`embedstore gradcam` and `embedstore gradcam validate`.

The eight options both commands share (method, layer, layer selection, curve steps, device,
batching, seed) are declared once, in `SHARED_OPTIONS`, and reach the library as one
`CamSettings`; `with_shared_options` adds them to a command."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from embedstore.choices import AnnotationFormat, CamMethod, Device, Split
from embedstore.cli.options import StoreOption, progress_factory, store_path

if TYPE_CHECKING:
    from embedstore.cam.workspace import CamSettings

app = typer.Typer(help="Grad-CAM maps of stored runs, and their validation against expert annotations.")


@dataclass(frozen=True)
class SharedOption:
    """One option of both commands: the `CamSettings` field it fills, its flag, type, default,
    help and (for numbers) least value."""

    field: str
    flag: str
    kind: type
    default: object
    help: str
    least: int | None = None

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(self.field, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=self.kind,
                                 default=typer.Option(self.default, self.flag, help=self.help, min=self.least))


SHARED_OPTIONS = (
    SharedOption("method", "--method", CamMethod, CamMethod.GRADCAM, "Saliency method (pytorch-grad-cam)."),
    SharedOption("layer", "--layer", str, "auto",
                 "auto (timm ViT: trunk.blocks.-3.attn.proj, the study's; open_clip ViT: transformer.resblocks.-3; "
                 "CNN: the last stage) or a dotted path below the image tower."),
    SharedOption("select_layer", "--select-layer", bool, False,
                 "Pick the candidate layer with the lowest mean deletion AUC on val images."),
    SharedOption("select_maps", "--select-maps", int, 24, "--select-layer: val (image, label) maps scored per layer.",
                 least=1),
    SharedOption("steps", "--steps", int, 16, "Deletion / insertion curve steps.", least=2),
    SharedOption("device", "--device", Device, Device.AUTO, "Where the model runs."),
    SharedOption("batch_size", "--batch-size", int, 16, "Images per Grad-CAM batch.", least=1),
    SharedOption("seed", "--seed", int, 42, "Image sampling (the study: 42), tie-breaking, bootstrap."),
)


def with_shared_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with SHARED_OPTIONS added before its `--store`, called with their values gathered
    into one `settings: CamSettings` (the command declares `settings`, not the eight options)."""
    # `settings` leaves the signature, so its annotation is resolved as a placeholder: CamSettings is
    # imported only when a command runs (startup stays light).
    signature = inspect.signature(command, eval_str=True, locals={"CamSettings": object})
    own = [p for p in signature.parameters.values() if p.name != "settings"]
    at = next(i for i, p in enumerate(own) if p.name == "store")
    parameters = own[:at] + [option.parameter() for option in SHARED_OPTIONS] + own[at:]

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        from embedstore.cam.workspace import CamSettings

        settings = CamSettings(**{option.field: values.pop(option.field) for option in SHARED_OPTIONS})
        command(settings=settings, **values)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return wrapper


@app.callback(invoke_without_command=True)
@with_shared_options
def maps(
    ctx: typer.Context,
    settings: CamSettings,
    run: list[str] = typer.Option([], "--run", help="Run id; repeat for a labels × settings grid (same dataset)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for overlays, raw maps, grids, provenance.json."),
    samples: list[int] = typer.Option([], "--samples", help="Sample ids (default: --n images drawn from --split)."),
    n: int = typer.Option(15, "--n", min=1, help="Images drawn as the study did: frame.sample(n, random_state=seed)."),
    split: Split = typer.Option(Split.TEST, "--split", help="Split the images are drawn from."),
    labels: list[str] = typer.Option([], "--labels", help="Labels to map (default: each image's positive labels)."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Map the K highest-scoring labels of the first run."),
    annotations: list[Path] = typer.Option([], "--annotations",
                                           help="Outline each annotated region (any format validate reads; repeat "
                                                "for several files)."),
    annotations_format: AnnotationFormat = typer.Option(AnnotationFormat.AUTO, "--annotations-format",
                                                        help="The annotation files' format (auto: detected)."),
    masks: Path | None = typer.Option(None, "--masks", help="Mask folder used instead of the boxes."),
    store: Path | None = StoreOption,
) -> None:
    """Grad-CAM maps of chosen images and labels for one or more runs: overlays (PNG), raw maps (.npy)
    and, per image, the study's grid of labels × settings with each label's score in the title."""
    if ctx.invoked_subcommand is not None:
        return
    from embedstore.cam.run import MapsConfig, render_maps
    from embedstore.errors import InputError
    from embedstore.store import Store

    if not run or out is None:
        raise InputError("embedstore gradcam needs --run RUN and --out DIR (or the `validate` subcommand)")
    config = MapsConfig(runs=tuple(run), out=out, samples=tuple(samples), n=n, split=split, labels=tuple(labels),
                        top_k=top_k, annotations=tuple(annotations), masks=masks, settings=settings,
                        annotations_format=annotations_format)
    with ExitStack() as bars:
        result = render_maps(Store.open(store_path(store)), config, progress=progress_factory(bars, "map"))
    layers = ", ".join(f"{run_id} at {name}" for run_id, name in result.layers.items())
    typer.echo(f"wrote {result.n_maps} maps of {len(result.samples)} images to {result.out} ({layers})")
    for grid in result.grids:
        typer.echo(f"  {grid}")


@app.command()
@with_shared_options
def validate(
    settings: CamSettings,
    run: str = typer.Option(..., "--run", help="Run id."),
    annotations: list[Path] = typer.Option(..., "--annotations",
                                           help="Annotation file or folder (docs/annotations.md: boxes CSV, PNG masks, "
                                                "NIH BBox_List, VinDr-CXR, CheXlocalize, MS-CXR, RSNA, SIIM-ACR, "
                                                "COCO); repeat it for several readers' files."),
    annotations_format: AnnotationFormat = typer.Option(AnnotationFormat.AUTO, "--annotations-format",
                                                        help="The annotation files' format (auto: detected)."),
    masks: Path | None = typer.Option(None, "--masks",
                                      help="With the boxes CSV: folder of masks <image stem>__<label_slug>.png, "
                                           "used instead of the boxes."),
    split: Split = typer.Option(Split.TEST, "--split", help="Validate on the annotated images of this split."),
    n: int | None = typer.Option(None, "--n", min=1,
                                 help="Only N annotated images, drawn as the study did, and at most N val images "
                                      "for the thresholds (default: all)."),
    top_p: float | None = typer.Option(None, "--top-p",
                                       help="IoU region: this share of the pixels (default: the annotation's area)."),
    tolerance: float | None = typer.Option(None, "--tolerance", min=0.0,
                                           help="Pointing-game hit distance in input pixels (default: 15 px at 224, "
                                                "scaled to the model's input)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Resamples for the 95 % intervals (0: none)."),
    sanity_maps: int = typer.Option(16, "--sanity-maps", min=1, help="Maps compared at each randomisation step."),
    store: Path | None = StoreOption,
) -> None:
    """Pointing game, energy pointing game and top-p IoU against the annotations (each with its chance
    baseline and a bootstrap interval), CheXlocalize's mIoU and hit rate (thresholds tuned on val, by
    lesion size), the human ceiling where several readers annotated an image, phrase grounding for zs
    runs, deletion / insertion AUC, and the model-randomisation check."""
    from embedstore.cam.run import ValidateConfig
    from embedstore.cam.run import validate as run_validate
    from embedstore.cli.output import print_tables
    from embedstore.rendering.tables import localisation_tables
    from embedstore.store import Store

    config = ValidateConfig(run=run, annotations=tuple(annotations), masks=masks, split=split, n=n, top_fraction=top_p,
                            tolerance=tolerance, bootstrap=bootstrap, sanity_maps=sanity_maps, settings=settings,
                            annotations_format=annotations_format)
    with ExitStack() as bars:
        result = run_validate(Store.open(store_path(store)), config, progress=progress_factory(bars, "map"))
    typer.echo(f"run {result.run_id}, {settings.method} at {result.layer}, {len(result.records)} annotated maps:")
    print_tables(localisation_tables(result.rows))
    steps_text = ", ".join(f"{s.stage} {s.spearman:.2f}" for s in result.sanity)
    verdict = ("FLAGGED: the maps barely change when the model's weights are randomised" if result.flagged
               else "passed: the maps change when the model's weights are randomised")
    typer.echo(f"randomisation check (Spearman ρ trained vs randomised, top-down): {steps_text}")
    typer.echo(f"randomisation check {verdict}")
