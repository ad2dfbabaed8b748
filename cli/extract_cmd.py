"""`embedstore extract`."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from embedstore.choices import Device, Mode, PromptChoice, PromptSet, Protocol
from embedstore.cli.options import StoreOption, progress_factory, store_path

if TYPE_CHECKING:
    from embedstore.extract import ExtractResult


def extract(
    mode: Mode = typer.Option(..., "--mode", help="zs (zero-shot), lp (linear probe) or ft (fine-tune)."),
    model: str = typer.Option(..., "--model", help="demo, biomedclip, hf-hub:…, local-dir:…, or an open_clip name."),
    data: str = typer.Option(..., "--data", help="Dataset name (from `embedstore ingest --name`)."),
    protocol: Protocol = typer.Option(Protocol.MULTILABEL, "--protocol",
                                      help="study (the notebook's exact protocol) or multilabel."),
    prompts: PromptChoice | None = typer.Option(None, "--prompts",
                                                help="zs prompt style: bare names, a template ensemble, positive/"
                                                     "negative pairs, 'findings consistent with …', report "
                                                     "sentences, lay phrases; or all: one run per style, the "
                                                     "images encoded once (default: names for study, templates "
                                                     "for multilabel)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file",
                                             help="zs: a custom prompt style from a YAML or CSV file (label → "
                                                  "prompts, optional negatives); with --prompts all, swept too."),
    epochs: int = typer.Option(10, "--epochs", help="lp/ft: at most this many epochs (early stopping on val)."),
    batch_size: int = typer.Option(24, "--batch-size", help="lp/ft training batch size (the study: 24)."),
    encode_batch_size: int = typer.Option(128, "--encode-batch-size", help="Images per encoding batch."),
    device: Device = typer.Option(Device.AUTO, "--device", help="auto (CUDA when there is one), cpu or cuda."),
    seed: int = typer.Option(42, "--seed", help="Seed of the lp/ft head, training and batch order."),
    workers: int | None = typer.Option(None, "--workers",
                                       help="Image-decoding worker processes (default: cores - 1; 0: none)."),
    chunk_size: int = typer.Option(1024, "--chunk-size", help="Embeddings committed per transaction."),
    resume: bool = typer.Option(False, "--resume", help="Finish a run that was interrupted."),
    store: Path | None = StoreOption,
) -> None:
    """Write a complete run (embeddings, scores, FAISS index, artefacts) for every split."""
    from embedstore.locking import refuse_if_written

    refuse_if_written(store_path(store))  # before torch and the model are even imported
    from embedstore.distributed import Ranks
    from embedstore.extract import ExtractConfig, default_workers
    from embedstore.extract import extract as run_extract
    from embedstore.store import Store

    sweep = prompts == PromptChoice.ALL
    style = None if prompts is None or sweep else PromptSet(prompts)
    config = ExtractConfig(mode=mode, model=model, data=data, protocol=protocol, prompts=style,
                           prompts_file=prompts_file, epochs=epochs,
                           batch_size=batch_size, encode_batch_size=encode_batch_size, device=device, seed=seed,
                           resume=resume, chunk_size=chunk_size,
                           workers=default_workers() if workers is None else workers)
    config.validate()
    ranks = Ranks.from_environment()  # one rank of a torchrun job, or one process
    if not ranks.leader:  # rank 0 reports the job's progress; the others say only what goes wrong
        logging.getLogger("embedstore").setLevel(logging.WARNING)
    if sweep:
        from embedstore.prompt_sweep import extract_prompt_sweep

        with ExitStack() as bars:
            runs = extract_prompt_sweep(Store.open(store_path(store)), config, progress=progress_factory(bars, "img"),
                                        ranks=ranks)
        for run in runs:
            _report(run.result, f"prompts {run.prompt_set}; ")
        return
    with ExitStack() as bars:
        result = run_extract(Store.open(store_path(store)), config, progress=progress_factory(bars, "img"),
                             ranks=ranks)
    _report(result)


def _report(result: ExtractResult, prefix: str = "") -> None:
    """One line per run: its status, id, samples, timings and where its embeddings came from."""
    timing = ", ".join(f"{name} {value:.1f} s" for name, value in
                       (("train", result.train_seconds), ("extract", result.extract_seconds)) if value is not None)
    reused = f"; embeddings reused from {result.embeddings_from}" if result.embeddings_from else ""
    if result.rank_note:  # a rank other than 0 of a torchrun job
        typer.echo(result.rank_note)
        return
    typer.echo(f"{result.status}: run {result.run_id} ({prefix}{result.n_samples} samples; {timing}{reused})")
