"""`embedstore extract`: a complete run (zs, lp or ft) into the store, resumable at any point.

A run's id is a hash of everything that determines its result (mode, protocol, prompts, model
weights sha256, preprocessing, dataset manifest, recipe, seed), so asking again for a finished run
reuses it, and `--resume` finishes an interrupted one. Embeddings are committed in chunks; scores,
text and report embeddings, the FAISS index and the `complete` status come last, so a run that never
finishes is never shown as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from embedstore import __version__, errors, queries
from embedstore.choices import Device, Mode, PromptSet, Protocol, parse
from embedstore.distributed import Ranks, agree, gather, joined, share
from embedstore.embeddings import (
    commit_staged,
    insert_new_image_embeddings,
    new_embedding_rows,
    read_image_embeddings,
    remove_staged,
    remove_staging,
    report_embedding_rows,
    stage_image_embeddings,
    staged_files,
    staging_folder,
)
from embedstore.errors import EmbedstoreError, InputError, StoreBusyError
from embedstore.images import (
    CachedImages,
    ImageItem,
    TensorCache,
    autocast_dtype,
    batches,
    encode_autocast,
    encode_batch,
    encode_precision,
    ft_train_precision,
    normalize,
    prepare_encoder,
)
from embedstore.models import LoadedModel, load_model
from embedstore.paths import default_cache_path
from embedstore.prompts import DEFAULT_PROMPTS, PromptFile, build_prompts, fallback_labels, read_prompt_file, zero_shot_head
from embedstore.store import Store, StoreWriter, append_rows, first_row, resolve_dataset
from embedstore.vector_index import write_index

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "transformers", "faiss-cpu",
                      "faiss-gpu-cu12-cuvs", "duckdb", "numpy", "scikit-learn", "polars", "pyarrow", "grad-cam")


@dataclass(frozen=True)
class ExtractConfig:
    """Options of `embedstore extract`."""

    mode: Mode
    model: str
    data: str
    protocol: Protocol = Protocol.MULTILABEL
    prompts: PromptSet | None = None
    epochs: int = 10
    batch_size: int = 24
    encode_batch_size: int = 128
    device: Device = Device.AUTO
    seed: int = 42
    resume: bool = False
    workers: int = field(default_factory=lambda: default_workers())
    chunk_size: int = 1024
    #: zs: a custom prompt style from this YAML or CSV file (embedstore/prompts.py, `read_prompt_file`)
    prompts_file: Path | None = None
    #: zs: copy the image embeddings of a complete run of the same encoder, preprocessing, dataset and
    #: precision instead of encoding again (a prompt sweep's runs; lp always does)
    reuse_embeddings: bool = False
    #: the custom prompt file as read (set from `prompts_file`)
    prompt_file: PromptFile | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Plain strings are accepted from Python; a value outside its choices is an InputError."""
        object.__setattr__(self, "mode", parse(Mode, self.mode, "mode"))
        object.__setattr__(self, "protocol", parse(Protocol, self.protocol, "protocol"))
        object.__setattr__(self, "device", parse(Device, self.device, "device"))
        if self.prompts is not None:
            object.__setattr__(self, "prompts", parse(PromptSet, self.prompts, "prompts"))
        if self.prompts_file is not None:
            if self.mode != Mode.ZS:
                raise InputError(f"prompts_file {self.prompts_file}: prompts are for zs runs only (mode {self.mode})",
                                 parameter="prompts_file")
            if self.prompts is not None:
                raise InputError(f"prompts_file {self.prompts_file}: give a prompt style or a prompts file, not both",
                                 parameter="prompts_file")
            object.__setattr__(self, "prompt_file", read_prompt_file(self.prompts_file))

    def validate(self) -> None:
        """Refuse numbers out of range (InputError naming the parameter and its value)."""
        checks = [
            ("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1),
            ("encode_batch_size", self.encode_batch_size, 1), ("workers", self.workers, 0),
            ("chunk_size", self.chunk_size, 1),
        ]
        for name, value, least in checks:
            if value < least:
                bound = "at least 1" if least == 1 else "0 or more"
                raise InputError(f"{name} {value}: must be {bound}", parameter=name)

    @property
    def prompt_set(self) -> str | None:
        """The run's prompt style: a `PromptSet`, `custom:<file stem>`, or None for lp and ft."""
        if self.mode != Mode.ZS:
            return None
        if self.prompt_file is not None:
            return self.prompt_file.name
        return self.prompts or DEFAULT_PROMPTS[self.protocol]


@dataclass(frozen=True)
class ExtractResult:
    run_id: str
    mode: str
    protocol: str
    status: str
    n_samples: int
    train_seconds: float | None
    extract_seconds: float | None
    embeddings_from: str | None
    #: on a rank other than 0 of a torchrun job: what it did (rank 0 writes the run and reports it)
    rank_note: str | None = None


@dataclass
class RunContext:
    """Everything a mode needs: the store and writer, the model, the dataset's samples and targets."""

    store: Store
    #: the writer lock, held by rank 0 only (None on the other ranks of a torchrun job)
    writer: StoreWriter | None
    config: ExtractConfig
    run_id: str
    model: LoadedModel
    dataset_id: str
    items: list[ImageItem]
    splits: np.ndarray
    labels: list[str]
    targets: np.ndarray
    device: Any
    cache: TensorCache
    progress: Callable[[int, str], Callable[[int], None]] | None
    #: False where a (sample, label) pair is left out (`--uncertain ignore`); all True otherwise
    known: np.ndarray | None = None
    #: this process's place in a torchrun job (a single process: rank 0 of 1)
    ranks: Ranks = field(default_factory=Ranks)
    #: per rank: images encoded and seconds (a torchrun job's provenance)
    rank_timings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def leader_writer(self) -> StoreWriter:
        """The writer lock, which only rank 0 holds: every database write goes through it."""
        if self.writer is None:
            raise RuntimeError(f"rank {self.ranks.rank} tried to write the store; only rank 0 does")
        return self.writer

    def fit_targets(self) -> np.ndarray:
        """The targets training reads: NaN at pairs left out (`training_targets`)."""
        return self.targets if self.known is None else training_targets(self.targets, self.known)


@dataclass
class StageOutput:
    """What a mode produced, for the final commit."""

    embeddings: np.ndarray
    scores: np.ndarray
    text_rows: list[tuple[str, str, np.ndarray]] = field(default_factory=list)
    train_seconds: float | None = None
    extract_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    #: zs: the embeddings of the samples' reports (`report_embeddings`); None for lp and ft
    reports: ReportEmbeddings | None = None


@dataclass(frozen=True)
class ReportEmbeddings:
    """A zs run's text tower on each sample's report (samples with report text only), each report cut
    to the tower's context length; `truncated` marks the reports that were cut."""

    sample_ids: np.ndarray
    vectors: np.ndarray
    truncated: np.ndarray
    context_length: int

    def summary(self) -> dict[str, int]:
        """What the run's config records: how many reports were encoded and cut, and the context length."""
        return {"encoded": len(self.sample_ids), "truncated": int(self.truncated.sum()),
                "context_length": self.context_length}


def default_workers() -> int:
    """Decoding processes beside the main one: all cores but one, at most 8; under torchrun the cores
    are shared by the node's ranks (LOCAL_WORLD_SIZE)."""
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, (os.cpu_count() or 2) // ranks_here - 1))


def resolve_device(name: str, ranks: Ranks | None = None) -> torch.device:
    """The torch device for `auto`, `cpu` or `cuda` (`auto`: CUDA when there is one); under torchrun
    the GPU of this rank's LOCAL_RANK."""
    import torch

    device = parse(Device, name, "device")
    if device == Device.CUDA and not torch.cuda.is_available():
        raise InputError("device 'cuda': no CUDA device is available here; choose cpu or auto", parameter="device")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == Device.AUTO else device.value
    if kind == "cuda" and ranks is not None and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return torch.device(kind)


def describe_device(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "embedstore": __version__}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------
# Dataset access
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetTargets:
    """A dataset's samples and targets as extraction reads them: `targets` is 1 where a label is positive,
    0 otherwise; `known` is False for a pair left out (`--uncertain ignore`), whose target 0 means nothing."""

    dataset_id: str
    manifest_sha256: str
    items: list[ImageItem]
    splits: np.ndarray
    labels: list[str]
    targets: np.ndarray
    known: np.ndarray


def _dataset(store: Store, name: str) -> DatasetTargets:
    name = resolve_dataset(store, name)
    with store.reader() as con:
        row = first_row(con, "SELECT dataset_id, manifest_sha256 FROM datasets WHERE name = ?", [name])
        if row is None:  # removed since it was resolved: another process replaced the dataset
            raise InputError(f"dataset {name!r}: no such dataset in {store.path}; ingest it with `embedstore ingest`")
        dataset_id, manifest_sha = row
        samples = queries.fetch(con, "dataset_samples", dataset_id=dataset_id)
        label_rows = queries.fetch(con, "dataset_positives", dataset_id=dataset_id)
        left_out = queries.fetch(con, "dataset_left_out", dataset_id=dataset_id)
        labels = [r[0] for r in queries.fetch(con, "dataset_labels", dataset_id=dataset_id)]
    items = [ImageItem(int(sid), path, sha) for sid, path, sha, _ in samples]
    splits = np.array([split for *_, split in samples])
    position = {item.sample_id: i for i, item in enumerate(items)}
    column = {label: j for j, label in enumerate(labels)}
    targets = np.zeros((len(items), len(labels)), dtype=np.float32)
    for sample_id, label in label_rows:
        targets[position[int(sample_id)], column[label]] = 1.0
    known = np.ones(targets.shape, dtype=bool)
    for sample_id, label in left_out:
        known[position[int(sample_id)], column[label]] = False
    return DatasetTargets(dataset_id, manifest_sha, items, splits, labels, targets, known)


def training_targets(targets: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Targets as the heads read them (embedstore/heads.py): NaN where a pair is left out, so that
    every training and validation loss gives it weight 0."""
    return np.where(known, targets, np.float32(np.nan)).astype(np.float32)


def _run_identity(config: ExtractConfig, model: LoadedModel, dataset_id: str, manifest_sha: str,
                  device_type: str) -> dict[str, Any]:
    """What determines a run's result, its id hashed from it; it includes the numeric precision
    (encoding, and ft's training autocast), so every run's config says which it used."""
    identity: dict[str, Any] = {
        "mode": config.mode, "protocol": config.protocol, "prompt_set": config.prompt_set,
        "model_sha256": model.sha256, "preprocess_key": model.preprocess_key,
        "dataset_id": dataset_id, "dataset_manifest_sha256": manifest_sha, "seed": config.seed,
        "encode_precision": encode_precision(config.protocol, device_type),
    }
    if config.prompt_file is not None:  # a custom style: its prompts, by the file's content
        identity["prompts_sha256"] = config.prompt_file.sha256
    if config.mode != Mode.ZS:
        identity |= {"epochs": config.epochs, "batch_size": config.batch_size}
    if config.mode == Mode.FT:
        identity["ft_train_precision"] = ft_train_precision(config.protocol, device_type)
    return identity


# ---------------------------------------------------------------------------------------------
# Encoding (shared by every mode)
# ---------------------------------------------------------------------------------------------

#: How long a chunk commit waits for a reader before the chunk is staged instead (extraction goes on).
CHUNK_COMMIT_WAIT_SECONDS = 0.5


def _commit_embeddings(ctx: RunContext, sample_ids: np.ndarray | None, vectors: np.ndarray | None,
                       wait: bool, named: list[str] | None = None) -> bool:
    """Commit staged chunks (those listed in the folder, and the `named` ones, which another node's
    rank staged and a cached directory listing of a shared file system may not show yet), then
    these rows, in one transaction; rows the run holds already are skipped. Without `wait`, a
    database held by a reader stages the rows as a Parquet file and returns False instead of blocking."""
    folder = staging_folder(ctx.store.path, ctx.run_id)
    files = sorted({*staged_files(folder), *(folder / name for name in named or [])})
    try:
        with ctx.leader_writer.transaction(None if wait else CHUNK_COMMIT_WAIT_SECONDS) as con:
            commit_staged(con, ctx.run_id, files)
            if sample_ids is not None and vectors is not None:
                insert_new_image_embeddings(con, ctx.run_id, new_embedding_rows(ctx.run_id, sample_ids, vectors))
    except StoreBusyError:
        if sample_ids is None or vectors is None:
            return False
        stage_image_embeddings(folder, ctx.run_id, sample_ids, vectors)
        return False
    remove_staged(files)
    return True


def _committed_ids(ctx: RunContext) -> set[int]:
    """The samples the run's table holds (a read: it shares the database with other readers, no wait)."""
    with ctx.store.reader() as con:
        return {int(row[0]) for row in queries.fetch(con, "index_ids", run_id=ctx.run_id)}


def _done_ids(ctx: RunContext) -> set[int]:
    _commit_embeddings(ctx, None, None, wait=True)  # chunks staged before an interruption count as done
    return _committed_ids(ctx)


def encode_into_run(ctx: RunContext, visual: Any = None) -> float:
    """Encode every image not yet in the run with `visual` (default: the model's image tower),
    committing every `chunk_size` rows. While a reader holds the database, chunks are staged and
    encoding goes on; they are committed at the next chance, at the latest at the end. Returns the
    seconds spent."""
    import torch

    visual = visual if visual is not None else ctx.model.model.visual
    if ctx.ranks.distributed:
        return _encode_shards(ctx, visual)
    done = _done_ids(ctx)
    todo = [item for item in ctx.items if item.sample_id not in done]
    if not todo:
        return 0.0
    started = time.perf_counter()
    visual = prepare_encoder(visual, ctx.device)
    autocast = encode_autocast(ctx.device, ctx.config.protocol)
    dataset = CachedImages(todo, ctx.cache, ctx.model.pixel_transform)
    pending_ids: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    staged_notice = False

    def commit(final: bool) -> None:
        nonlocal staged_notice
        ids = np.concatenate(pending_ids) if pending_ids else None
        vectors = np.concatenate(pending) if pending else None
        pending_ids.clear()
        pending.clear()
        if not _commit_embeddings(ctx, ids, vectors, wait=final) and not staged_notice:
            staged_notice = True
            log.info("the store is being read: embeddings are staged under %s and committed once it is free",
                     staging_folder(ctx.store.path, ctx.run_id))

    advance = ctx.progress(len(todo), "encoding images") if ctx.progress else None
    with torch.no_grad():
        for sample_ids, images in batches(dataset, ctx.config.encode_batch_size, ctx.config.workers):
            features = encode_batch(visual, images, ctx.model.mean, ctx.model.std, ctx.device, autocast)
            pending_ids.append(sample_ids.numpy().astype(np.int64))
            pending.append(features.cpu().numpy())
            if sum(len(p) for p in pending_ids) >= ctx.config.chunk_size:
                commit(final=False)
            if advance:
                advance(len(sample_ids))
    commit(final=True)
    return time.perf_counter() - started


def _staged_ids(folder: Path) -> set[int]:
    """The sample ids of every chunk staged in `folder` (read from the files' `sample_id` column)."""
    import pyarrow.parquet as pq

    ids: set[int] = set()
    for path in staged_files(folder):
        column = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_numpy()
        ids.update(int(i) for i in column)
    return ids


def shard_plan(items: list[ImageItem], chunk_size: int) -> list[list[ImageItem]]:
    """The job's shards: the samples in sample-id order, in contiguous runs of `chunk_size`. Every rank
    derives the same plan; shard k is rank (k mod world size)'s."""
    ordered = sorted(items, key=lambda item: item.sample_id)
    return [ordered[start:start + chunk_size] for start in range(0, len(ordered), chunk_size)]


def _encode_shards(ctx: RunContext, visual: Any) -> float:
    """A torchrun job's encoding: each rank encodes the samples of its shards that neither the run's
    table nor a staged chunk holds yet, and stages each shard as a Parquet chunk (atomically: a chunk
    that exists is done); after a barrier, rank 0 commits every staged chunk in one transaction (rows
    the run has already are skipped). A killed job resumes shard by shard, with any world size, or in
    one process (which commits the staged chunks first). Returns this rank's seconds."""
    import torch

    folder = staging_folder(ctx.store.path, ctx.run_id)
    done = _committed_ids(ctx) | _staged_ids(folder)
    shards = shard_plan(ctx.items, ctx.config.chunk_size)
    mine = [[item for item in shards[k] if item.sample_id not in done] for k in ctx.ranks.shards(len(shards))]
    todo = [shard for shard in mine if shard]
    everyone = sum(gather(ctx.ranks, sum(len(shard) for shard in todo)))
    label = f"encoding images ({ctx.ranks.world_size} ranks, paced by rank 0)"
    advance = ctx.progress(everyone, label) if ctx.progress and ctx.ranks.leader and everyone else None
    started = time.perf_counter()
    encoded = 0
    staged: list[str] = []
    if todo:
        visual = prepare_encoder(visual, ctx.device)
        autocast = encode_autocast(ctx.device, ctx.config.protocol)
        with torch.no_grad():
            for shard in todo:
                ids, vectors = [], []
                dataset = CachedImages(shard, ctx.cache, ctx.model.pixel_transform)
                for sample_ids, images in batches(dataset, ctx.config.encode_batch_size, ctx.config.workers):
                    features = encode_batch(visual, images, ctx.model.mean, ctx.model.std, ctx.device, autocast)
                    ids.append(sample_ids.numpy().astype(np.int64))
                    vectors.append(features.cpu().numpy())
                    if advance:
                        advance(len(sample_ids) * ctx.ranks.world_size)
                staged.append(stage_image_embeddings(folder, ctx.run_id, np.concatenate(ids),
                                                     np.concatenate(vectors)).name)
                encoded += sum(len(i) for i in ids)
    seconds = time.perf_counter() - started
    reports = gather(ctx.ranks, {"rank": ctx.ranks.rank, "images": encoded, "seconds": round(seconds, 3),
                                 "device": describe_device(ctx.device), "chunks": staged})  # every shard is staged
    ctx.rank_timings = [{key: value for key, value in report.items() if key != "chunks"} for report in reports]
    if ctx.ranks.leader:
        _commit_embeddings(ctx, None, None, wait=True, named=[name for report in reports for name in report["chunks"]])
    return seconds


def _run_embeddings(ctx: RunContext) -> np.ndarray:
    """The run's embeddings in the order of `ctx.items` (one per sample, checked)."""
    with ctx.store.reader() as con:
        ids, matrix = read_image_embeddings(con, ctx.run_id)
    expected = np.array([item.sample_id for item in ctx.items], dtype=np.int64)
    if not np.array_equal(ids, expected):
        raise InputError(f"run {ctx.run_id}: embeddings do not cover the dataset's samples one for one")
    return matrix


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------

def run_zero_shot(ctx: RunContext) -> StageOutput | None:
    """Encode images (or copy a reusable run's, `reuse_embeddings`) and prompts; score per protocol
    (raw dot product, or cosine × logit scale)."""
    source = _shared_source(ctx) if ctx.config.reuse_embeddings else None
    seconds = encode_into_run(ctx) if source is None else 0.0
    if not ctx.ranks.leader:
        return None
    image = _run_embeddings(ctx)
    prompt_file = ctx.config.prompt_file
    prompts = build_prompts(str(ctx.config.prompt_set), ctx.labels, prompt_file)
    text = ctx.model.encode_text([p.text for p in prompts]).cpu().numpy()
    logit_scale = float(ctx.model.model.logit_scale.detach().exp()) if hasattr(ctx.model.model, "logit_scale") else 1.0
    scores = zero_shot_head(ctx.config.protocol, prompts, text, ctx.labels, logit_scale).logits(image)
    rows = [(p.label, p.text, text[i]) for i, p in enumerate(prompts)]
    reports = (_stored_reports(ctx, source) if source else None) or encode_reports(ctx)
    details = {"prompts": [p.text for p in prompts], "logit_scale": logit_scale,
               "report_embeddings": reports.summary(), "embeddings_from": source}
    fallbacks = fallback_labels(str(ctx.config.prompt_set), ctx.labels, prompt_file)
    if fallbacks is not None:  # lay or custom: the labels it has no phrase for are prompted with their name
        details["prompt_fallbacks"] = fallbacks
    if prompt_file is not None:
        details["prompts_file"] = prompt_file.as_config()
    return StageOutput(image, scores, rows, None, seconds, details, reports)


def encode_reports(ctx: RunContext) -> ReportEmbeddings:
    """The text tower on the report of every sample that has report text, in batches of the encode batch
    size, on the run's device. A report longer than the context length is cut to it (counted). Report
    text is patient data: it is read here and never logged."""
    with ctx.store.reader() as con:
        rows = queries.fetch(con, "dataset_reports", dataset_id=ctx.dataset_id)
    model, size = ctx.model, ctx.config.encode_batch_size
    ids = np.array([int(row[0]) for row in rows], dtype=np.int64)
    vectors: list[np.ndarray] = []
    truncated: list[np.ndarray] = []
    advance = ctx.progress(len(rows), "encoding reports") if ctx.progress and rows else None
    if rows:
        model.model.to(ctx.device)
    for start in range(0, len(rows), size):
        tokens, cut = model.tokenize_long([str(row[1]) for row in rows[start:start + size]])
        vectors.append(model.encode_tokens(tokens, ctx.device).cpu().numpy().astype(np.float32))
        truncated.append(cut)
        if advance:
            advance(len(cut))
    dim = vectors[0].shape[1] if vectors else ctx.model.embed_dim
    result = ReportEmbeddings(ids, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
                              np.concatenate(truncated) if truncated else np.zeros(0, bool), model.context_length)
    summary = result.summary()
    log.info("encoded %d report(s); %d longer than the text tower's %d tokens were cut", summary["encoded"],
             summary["truncated"], summary["context_length"])
    return result


def _stored_reports(ctx: RunContext, source: str) -> ReportEmbeddings | None:
    """The report embeddings of the run whose image embeddings this one reuses (same weights, so the same
    text tower), or None when it stored none (an lp run)."""
    with ctx.store.reader() as con:
        rows = queries.fetch(con, "run_report_embeddings", run_id=source)
    if not rows:
        return None
    log.info("zs: reusing the report embeddings of run %s (no report is encoded)", source)
    return ReportEmbeddings(np.array([r[0] for r in rows], dtype=np.int64),
                            np.array([r[1] for r in rows], dtype=np.float32),
                            np.array([r[2] for r in rows], dtype=bool), int(rows[0][3]))


def _shared_source(ctx: RunContext) -> str | None:
    """Rank 0 looks for a reusable run and copies its embeddings into this run; every rank learns which."""

    def copy() -> str | None:
        source = _reusable_source(ctx)
        if source is not None:
            _copy_embeddings(ctx, source)
        return source

    return share(ctx.ranks, _on_rank_0(ctx.ranks, copy))


def _copy_embeddings(ctx: RunContext, source: str) -> None:
    with ctx.leader_writer.transaction() as con:
        queries.execute_all(con, "copy_embeddings", {"run_id": ctx.run_id, "source_run_id": source})
    log.info("%s: reusing the embeddings of run %s (no image is encoded)", ctx.config.mode, source)


def _reusable_source(ctx: RunContext) -> str | None:
    """A complete frozen-encoder run of the same weights, preprocessing and dataset."""
    with ctx.store.reader() as con:
        row = queries.fetch_one(con, "reusable_embeddings", model_sha256=ctx.model.sha256, dataset_id=ctx.dataset_id,
                                preprocess_key=ctx.model.preprocess_key, run_id=ctx.run_id,
                                encode_precision=encode_precision(ctx.config.protocol, ctx.device.type))
    return row[0] if row else None


def _fit_split(ctx: RunContext, embeddings: np.ndarray) -> tuple[np.ndarray, ...]:
    train, val = ctx.splits == "train", ctx.splits == "val"
    if not train.any() or not val.any():
        raise InputError(f"dataset {ctx.config.data!r}: lp and ft need samples in both the train and val splits")
    targets = ctx.fit_targets()
    return embeddings[train], targets[train], embeddings[val], targets[val]


def run_linear_probe(ctx: RunContext) -> StageOutput:
    """Fit the head on cached embeddings; encode images only if this encoder has none stored."""
    from embedstore.heads import LP_RECIPES

    source = _reusable_source(ctx)
    seconds = 0.0
    if source is not None:
        _copy_embeddings(ctx, source)
    else:
        seconds = encode_into_run(ctx)
    embeddings = _run_embeddings(ctx)
    fit = LP_RECIPES[ctx.config.protocol](*_fit_split(ctx, embeddings), ctx.config.epochs, ctx.config.batch_size,
                                          ctx.config.seed)
    head_sha = ctx.leader_writer.write_artefact(
        f"artefacts/{ctx.run_id}/head.npz", "head",
        lambda handle: np.savez(handle, **fit.head.state(), labels=np.array(ctx.labels)),
        run_id=ctx.run_id,
    )
    details = {"embeddings_from": source, "fit": fit.detail, "best_epoch": fit.best_epoch,
               "epochs_run": fit.epochs_run, "val_bce": fit.val_loss, "head_sha256": head_sha}
    return StageOutput(embeddings, fit.head.logits(embeddings), [], fit.seconds, seconds, details)


def _finetune_data(ctx: RunContext) -> Any:
    """The ft recipes' batches. Under torchrun `--batch-size` stays global: each rank reads its share of
    every global batch, in the single process's order (`heads.rank_batches`); a single process reads
    the batches as it always has."""
    import torch

    from embedstore.heads import FineTuneData, rank_batches

    index_of = {item.sample_id: i for i, item in enumerate(ctx.items)}
    targets = torch.from_numpy(ctx.fit_targets())
    subsets = {name: [item for item, split in zip(ctx.items, ctx.splits, strict=True) if split == name]
               for name in ("train", "val")}
    if not subsets["train"] or not subsets["val"]:
        raise InputError(f"dataset {ctx.config.data!r}: ft needs samples in both the train and val splits")

    def shares(dataset: CachedImages, shuffle: bool, seed: int) -> Any:
        """(sample_ids, images, stand_in) of this rank's share of every global batch."""
        plan = rank_batches(len(dataset), ctx.config.batch_size, ctx.ranks, shuffle, seed)
        loaded = batches(dataset, ctx.config.batch_size, ctx.config.workers, batch_sampler=[ids for ids, _ in plan])
        for (_, stand_in), batch in zip(plan, loaded, strict=True):
            yield *batch, stand_in

    def generate(subset: list[ImageItem], shuffle: bool, epoch: int) -> Any:
        dataset = CachedImages(subset, ctx.cache, ctx.model.pixel_transform)
        seed = ctx.config.seed + epoch
        loaded = (shares(dataset, shuffle, seed) if ctx.ranks.distributed else
                  ((*batch, False) for batch in batches(dataset, ctx.config.batch_size, ctx.config.workers,
                                                         shuffle=shuffle, seed=seed)))
        for sample_ids, images, stand_in in loaded:
            batch_targets = targets[torch.tensor([index_of[int(s)] for s in sample_ids])]
            if stand_in:  # a rank's empty share of a short last batch: a sample whose every target is left out
                batch_targets = torch.full_like(batch_targets, float("nan"))
            yield normalize(images, ctx.model.mean, ctx.model.std, ctx.device), batch_targets.to(ctx.device)

    return FineTuneData(
        train_batches=lambda epoch: generate(subsets["train"], True, epoch),
        val_batches=lambda: generate(subsets["val"], False, 0),
        device=ctx.device,
        autocast_dtype=autocast_dtype(ft_train_precision(ctx.config.protocol, ctx.device.type)),
        batches_per_epoch=int(np.ceil(len(subsets["train"]) / ctx.config.batch_size)),
        ranks=ctx.ranks,
    )


def run_fine_tune(ctx: RunContext) -> StageOutput | None:
    """Fine-tune per protocol (or load the run's checkpoint when resuming), then encode every image
    with the fine-tuned encoder and score with its head."""
    import torch

    from embedstore.heads import FT_RECIPES, Head

    relpath = f"artefacts/{ctx.run_id}/finetuned.pt"
    visual = ctx.model.model.visual.to(ctx.device)
    with ctx.store.reader() as con:
        recorded = queries.fetch_one(con, "artefact_sha256", path=relpath)
    train_seconds: float | None
    if recorded:
        from embedstore.integrity import load_tensors

        state = load_tensors(ctx.store, relpath)        # checked against the manifest; tensors only, never code
        visual.load_state_dict(state["visual"])
        head, train_seconds = Head.from_state(state["head"]), state["train_seconds"]
        details = json.loads(state["details"]) | {"checkpoint_sha256": recorded[0]}
        log.info("ft: resuming from the run's checkpoint (training already done)")
    else:
        fit = FT_RECIPES[ctx.config.protocol](visual, ctx.model.embed_dim, len(ctx.labels), _finetune_data(ctx),
                                              ctx.config.epochs, ctx.config.seed)
        head, train_seconds = fit.head, fit.seconds
        details = {"fit": fit.detail, "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
                   "val_bce": fit.val_loss}
        # Tensors and plain values only (the details as JSON), so resuming reads it with weights_only=True.
        state = {"visual": visual.state_dict(), "details": json.dumps(details, default=str),
                 "head": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in head.state().items()},
                 "train_seconds": float(train_seconds)}
        if ctx.ranks.leader:  # every rank holds the same weights; rank 0 writes them
            details["checkpoint_sha256"] = ctx.leader_writer.write_artefact(
                relpath, "checkpoint", lambda handle: torch.save(state, handle), run_id=ctx.run_id)
    seconds = encode_into_run(ctx, visual)
    if not ctx.ranks.leader:
        return None
    embeddings = _run_embeddings(ctx)
    return StageOutput(embeddings, head.logits(embeddings), [], train_seconds, seconds, details)


#: What each mode runs.
MODES: dict[Mode, Callable[[RunContext], StageOutput | None]] = {
    Mode.ZS: run_zero_shot,
    Mode.LP: run_linear_probe,
    Mode.FT: run_fine_tune,
}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def _finish(ctx: RunContext, output: StageOutput, identity: dict[str, Any]) -> None:
    embeddings = output.embeddings
    ids = np.array([item.sample_id for item in ctx.items], dtype=np.int64)
    write_index(ctx.leader_writer, ctx.run_id, ids, embeddings)
    n, n_labels = output.scores.shape
    scores = pa.table({
        "run_id": pa.array([ctx.run_id] * (n * n_labels)),
        "sample_id": pa.array(np.repeat(ids, n_labels)),
        "label": pa.array(ctx.labels * n),
        "logit": pa.array(output.scores.reshape(-1).astype(np.float64)),
    })
    config = identity | {"labels": ctx.labels, "image_size": ctx.model.image_size,
                         "encode_batch_size": ctx.config.encode_batch_size} | output.details
    if ctx.rank_timings:  # a torchrun job: its size and each rank's share
        config["distributed"] = {"world_size": ctx.ranks.world_size, "ranks": ctx.rank_timings}
    if ctx.known is not None and not ctx.known.all():  # `--uncertain ignore`: pairs no loss saw
        config["targets_left_out"] = int((~ctx.known).sum())
    remove_staging(ctx.store.path, ctx.run_id)  # every staged chunk is committed (or lp copied its rows)
    with ctx.leader_writer.transaction() as con:
        queries.execute_all(con, "clear_run_outputs", {"run_id": ctx.run_id})
        append_rows(con, "scores", scores)
        if output.text_rows:
            append_rows(con, "text_embeddings", pa.table({
                "run_id": pa.array([ctx.run_id] * len(output.text_rows)),
                "label": pa.array([r[0] for r in output.text_rows]),
                "prompt": pa.array([r[1] for r in output.text_rows]),
                "embedding": pa.array([r[2].astype(np.float32).tolist() for r in output.text_rows],
                                      pa.list_(pa.float32())),
            }))
        if output.reports is not None and len(output.reports.sample_ids):
            append_rows(con, "report_embeddings", report_embedding_rows(
                ctx.run_id, output.reports.sample_ids, output.reports.vectors, output.reports.truncated))
        queries.execute(con, "complete_run", run_id=ctx.run_id, finished_at=_now(),
                        train_seconds=output.train_seconds, extract_seconds=output.extract_seconds,
                        config=json.dumps(config, default=str), embedding_dim=int(embeddings.shape[1]))


def extract(store: Store, config: ExtractConfig, progress: Callable[[int, str], Callable[[int], None]] | None = None,
            ranks: Ranks | None = None) -> ExtractResult:
    """Produce (or reuse, or resume) one complete run.

    The writer lock is taken first, before the dataset and the model are loaded, so a second
    writer is refused at once rather than after the heavy work. As one rank of a torchrun job
    (`ranks`: the CLI passes `Ranks.from_environment()`; a library call is one process) every rank
    runs this: rank 0 alone takes the lock and writes the database, and what it meets (a busy store,
    a run to resume) is raised on every rank; the ranks check that they agree on the run before any
    work, encode their shards, and (ft) train one DDP model.
    """
    config.validate()
    ranks = ranks or Ranks()
    device = resolve_device(config.device, ranks)
    if config.mode == Mode.FT and config.protocol == Protocol.MULTILABEL and config.epochs < 2 and ranks.leader:
        log.warning("warning: ft with epochs=1 under the multilabel protocol trains only the warm-up epoch on the "
                    "head; the encoder is never unfrozen, so the run's embeddings equal the frozen encoder's (as zs). "
                    "Ask for 2 or more epochs to fine-tune the encoder.")
    if ranks.distributed and config.mode == Mode.FT and config.batch_size < ranks.world_size:
        raise InputError(f"batch size {config.batch_size}: the global batch must hold one image per rank at least "
                         f"({ranks.world_size} ranks)", parameter="batch_size")
    if ranks.distributed and config.mode == Mode.LP:
        if not ranks.leader:  # a head on cached vectors: one process does it
            log.info("rank %d: lp fits a head on cached vectors in one process; rank 0 runs it", ranks.rank)
            return ExtractResult("", config.mode, config.protocol, "left to rank 0", 0, None, None, None,
                                 rank_note=f"rank {ranks.rank}: lp runs in one process; rank 0 fits and writes it")
        ranks = Ranks()
    command = f"embedstore extract --mode {config.mode} --model {config.model} --data {config.data}"
    with joined(ranks, device.type), contextlib.ExitStack() as held:
        writer = _on_rank_0(ranks, lambda: held.enter_context(store.writer(command)))
        return _extract(store, config, progress, ranks, device, writer)


T = TypeVar("T")


def _on_rank_0(ranks: Ranks, work: Callable[[], T]) -> T | None:
    """Rank 0 does `work`; an embedstore error it meets is raised on every rank (the others would wait
    for rank 0 in the next collective otherwise). Returns the result on rank 0, None elsewhere."""
    failure: tuple[str, str, list[str], str | None] | None = None
    result: T | None = None
    if ranks.leader:
        try:
            result = work()
        except EmbedstoreError as error:
            if not ranks.distributed:
                raise
            failure = (type(error).__name__, str(error), error.details, getattr(error, "parameter", None))
    failure = share(ranks, failure)
    if failure is not None:
        kind, message, details, parameter = failure
        error_type: type[EmbedstoreError] = getattr(errors, kind, EmbedstoreError)
        if issubclass(error_type, InputError):
            raise error_type(message, details, parameter)
        raise error_type(message, details)
    return result


def _extract(store: Store, config: ExtractConfig, progress: Callable[[int, str], Callable[[int], None]] | None,
             ranks: Ranks, device: Any, writer: StoreWriter | None) -> ExtractResult:
    import torch

    data = _dataset(store, config.data)
    dataset_id, items = data.dataset_id, data.items
    model = load_model(config.model)
    identity = _run_identity(config, model, dataset_id, data.manifest_sha256, device.type)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    run_id = f"{config.mode}-{config.protocol}-{digest[:10]}"
    agree(ranks, {"run": run_id, "dataset manifest": data.manifest_sha256, "model weights": model.sha256,
                  "embedstore version": __version__, "store": str(store.path.resolve()),
                  "chunk size": str(config.chunk_size)})
    reused = share(ranks, _on_rank_0(ranks, lambda: _open_run(writer, config, run_id, identity, model, dataset_id,
                                                              device) if writer is not None else None))
    if reused is not None:
        log.info("run %s is already complete: reusing it", run_id)
        return ExtractResult(run_id, config.mode, config.protocol, "reused", len(items), *reused)
    torch.manual_seed(config.seed)
    ctx = RunContext(store, writer, config, run_id, model, dataset_id, items, data.splits, data.labels, data.targets,
                     device, TensorCache(default_cache_path(), model.preprocess_key), progress if ranks.leader else None,
                     data.known, ranks)
    output = MODES[config.mode](ctx)
    if output is None:  # a rank other than 0: its shards are staged, rank 0 commits and finishes the run
        mine = next((t for t in ctx.rank_timings if t["rank"] == ranks.rank), {"images": 0})
        return ExtractResult(run_id, config.mode, config.protocol, "staged", len(items), None, None, None,
                             rank_note=f"rank {ranks.rank} of {ranks.world_size}: {mine['images']} images encoded "
                                       f"into run {run_id}; rank 0 commits and completes it")
    _finish(ctx, output, identity)
    log.info("run %s complete", run_id)
    return ExtractResult(run_id, config.mode, config.protocol, "complete", len(items), output.train_seconds,
                         output.extract_seconds, output.details.get("embeddings_from"))


def _open_run(writer: StoreWriter, config: ExtractConfig, run_id: str, identity: dict[str, Any], model: LoadedModel,
              dataset_id: str, device: Any) -> tuple[float | None, float | None, str | None] | None:
    """Rank 0: start the run, or check that it may be resumed; a complete run's (train seconds,
    extract seconds, embeddings source) to reuse, else None."""
    with writer.transaction() as con:
        existing = first_row(con, "SELECT status FROM runs WHERE run_id = ?", [run_id])
        if existing and existing[0] == "complete":
            row = first_row(con, "SELECT train_seconds, extract_seconds, json_extract_string(config, "
                              "'$.embeddings_from') FROM runs WHERE run_id = ?", [run_id])
            return (None, None, None) if row is None else (row[0], row[1], row[2])
        if existing and not config.resume:
            raise InputError(f"run {run_id} was started before and did not finish; ask to resume it to finish it",
                             parameter="resume")
        if not existing:
            queries.execute(con, "start_run", run_id=run_id, mode=config.mode, protocol=config.protocol,
                            model_id=config.model, model_sha256=model.sha256, dataset_id=dataset_id,
                            prompt_set=config.prompt_set, config=json.dumps(identity), started_at=_now(),
                            device=describe_device(device), versions=json.dumps(library_versions()))
    return None
