"""`embedstore extract`."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import typer

from embedstore.choices import Device, Mode, PromptSet, Protocol
from embedstore.cli.options import StoreOption, progress_factory, store_path


def extract(
    mode: Mode = typer.Option(..., "--mode", help="zs (zero-shot), lp (linear probe) or ft (fine-tune)."),
    model: str = typer.Option(..., "--model", help="demo, biomedclip, hf-hub:…, local-dir:…, or an open_clip name."),
    data: str = typer.Option(..., "--data", help="Dataset name (from `embedstore ingest --name`)."),
    protocol: Protocol = typer.Option(Protocol.MULTILABEL, "--protocol",
                                      help="study (the notebook's exact protocol) or multilabel."),
    prompts: PromptSet | None = typer.Option(None, "--prompts",
                                             help="zs prompts: the bare names, a template ensemble or positive/"
                                                  "negative pairs (default: names for study, templates for "
                                                  "multilabel)."),
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
    from embedstore.extract import ExtractConfig
    from embedstore.extract import extract as run_extract
    from embedstore.store import Store

    config = ExtractConfig(mode=mode, model=model, data=data, protocol=protocol, prompts=prompts, epochs=epochs,
                           batch_size=batch_size, encode_batch_size=encode_batch_size, device=device, seed=seed,
                           resume=resume, chunk_size=chunk_size,
                           **({"workers": workers} if workers is not None else {}))
    config.validate()
    ranks = Ranks.from_environment()  # one rank of a torchrun job, or one process
    if not ranks.leader:  # rank 0 reports the job's progress; the others say only what goes wrong
        logging.getLogger("embedstore").setLevel(logging.WARNING)
    with ExitStack() as bars:
        result = run_extract(Store.open(store_path(store)), config, progress=progress_factory(bars, "img"),
                             ranks=ranks)
    timing = ", ".join(f"{name} {value:.1f} s" for name, value in
                       (("train", result.train_seconds), ("extract", result.extract_seconds)) if value is not None)
    reused = f"; embeddings reused from {result.embeddings_from}" if result.embeddings_from else ""
    if result.rank_note:  # a rank other than 0 of a torchrun job
        typer.echo(result.rank_note)
        return
    typer.echo(f"{result.status}: run {result.run_id} ({result.n_samples} samples; {timing}{reused})")
