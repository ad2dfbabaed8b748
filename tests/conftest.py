"""Shared fixtures: a fresh store, a CLI runner in a real subprocess, a run with embeddings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedstore.embeddings import insert_image_embeddings  # noqa: E402
from embedstore.store import Store  # noqa: E402
from embedstore.vector_index import write_index  # noqa: E402


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def tmp_store(tmp_path: Path) -> Store:
    store, _ = Store.init(tmp_path / "store")
    return store


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Run `embedstore ARGS...` as a real process; returns code, stdout and stderr."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "embedstore.cli", *args],
            capture_output=True, text=True, env=full_env, timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def add_embedding_run(store: Store, run_id: str = "run-a", n: int = 20, d: int = 8, seed: int = 0) -> np.ndarray:
    """Write a complete run with `n` random embeddings and its FAISS index; returns the sample ids."""
    rng = np.random.default_rng(seed)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    with store.writer("test") as writer:
        with writer.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, mode, protocol, model_id, dataset_id, status)"
                " VALUES (?, 'zs', 'study', 'test', 'd', 'complete')",
                [run_id],
            )
            insert_image_embeddings(con, run_id, ids, vectors)
        write_index(writer, run_id, ids, vectors)
    return ids


SYNTHETIC_N = 120
SYNTHETIC_SIZE = 128


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic IU-Xray copy (read-only: copy it before changing anything)."""
    from embedstore.synthetic import SampleConfig, write_sample

    out = tmp_path_factory.mktemp("synthetic") / "iuxray"
    write_sample(SampleConfig(out=out, n=SYNTHETIC_N, seed=7, size=SYNTHETIC_SIZE, workers=1))
    return out


@pytest.fixture
def synthetic_copy(synthetic_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(synthetic_dir, target)
    return target


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensor and model caches in a per-session temp folder, never the user's."""
    monkeypatch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))


@pytest.fixture(scope="session")
def native_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.model_fixtures import make_native_clip

    return "local-dir:" + str(make_native_clip(tmp_path_factory.mktemp("native-clip")))


@pytest.fixture(scope="session")
def biomedclip_shaped(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.model_fixtures import make_biomedclip_shaped

    return "local-dir:" + str(make_biomedclip_shaped(tmp_path_factory.mktemp("biomedclip-shaped")))


@pytest.fixture
def synthetic_store(tmp_store: Store, synthetic_dir: Path) -> Store:
    """A store with the small synthetic dataset ingested as `syn` (study split)."""
    from embedstore.ingest import IngestConfig, ingest

    ingest(tmp_store, IngestConfig(path=synthetic_dir, name="syn"))
    return tmp_store


@pytest.fixture(scope="session")
def cam_store(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path, native_model: str
              ) -> Iterator[tuple[Store, dict[str, str]]]:
    """The small synthetic set with a zs (study), zs (multilabel, posneg), lp and ft run of the native
    ViT, by `<mode>-<protocol>` (tests/model_fixtures.py: CAM_RUN_KINDS). Shared by the Grad-CAM
    tests: add validations to it, never change its runs."""
    from embedstore.extract import ExtractConfig, extract
    from embedstore.ingest import IngestConfig, ingest
    from tests.model_fixtures import CAM_RUN_KINDS

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        store, _ = Store.init(tmp_path_factory.mktemp("cam") / "store")
        ingest(store, IngestConfig(path=synthetic_dir, name="syn"))
        runs = {}
        for mode, protocol, prompts in CAM_RUN_KINDS:
            runs[f"{mode}-{protocol}"] = extract(store, ExtractConfig(
                mode=mode, model=native_model, data="syn", protocol=protocol, prompts=prompts, epochs=1,
                encode_batch_size=64)).run_id
        yield store, runs
