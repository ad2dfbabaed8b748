"""Extraction as a torchrun job (`torchrun --standalone --nproc_per_node 2`, gloo on CPU): the same
embeddings as one process, one row per sample, a killed job resumed with 2 ranks or 1, ranks that
disagree refused, lp left to rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedstore.store import Store

JOB = Path(__file__).with_name("distributed_extract_job.py")


def _torchrun(args: list[str], env: dict[str, str] | None = None, job: Path | None = None,
              ranks: int = 2) -> subprocess.CompletedProcess[str]:
    target = [str(job)] if job else ["-m", "embedstore"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               *target, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=240)


def _single(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedstore", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)


def _embeddings(store: Store) -> tuple[np.ndarray, np.ndarray, int]:
    """(sample ids, embeddings) of the store's one zs run, and its row count."""
    with store.reader() as con:
        rows = con.execute("SELECT e.sample_id, e.embedding FROM image_embeddings e JOIN runs r USING (run_id) "
                           "WHERE r.mode = 'zs' ORDER BY e.sample_id").fetchall()
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.float32), len(rows)


def _ingested(folder: Path, synthetic_dir: Path) -> Store:
    from embedstore.ingest import IngestConfig, ingest

    store, _ = Store.init(folder)
    ingest(store, IngestConfig(path=synthetic_dir, name="syn"))
    return store


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path, native_model: str) -> Store:
    """The zs run of one ordinary process: what every job must equal (read-only)."""
    store = _ingested(tmp_path_factory.mktemp("one") / "store", synthetic_dir)
    with pytest.MonkeyPatch.context() as patch:  # the session's tensor cache, as the other tests use
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        assert _single(_zs(store, native_model)).returncode == 0
    return store


@pytest.fixture
def job(tmp_path: Path, synthetic_dir: Path) -> Store:
    return _ingested(tmp_path / "job", synthetic_dir)


def _zs(store: Store, model: str, *more: str) -> list[str]:
    return ["extract", "--mode", "zs", "--model", model, "--data", "syn", "--store", str(store.path),
            "--chunk-size", "16", "--workers", "0", *more]


def _check_equal(one: Store, job: Store) -> None:
    ids_one, vectors_one, rows_one = _embeddings(one)
    ids_job, vectors_job, rows_job = _embeddings(job)
    with job.reader() as con:
        n_samples = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert rows_job == n_samples == len(set(ids_job.tolist())), "exactly one row per sample"
    assert np.array_equal(ids_one, ids_job)
    np.testing.assert_allclose(vectors_job, vectors_one, atol=1e-5)
    verified = _single(["store", "verify", "--store", str(job.path)])
    assert verified.returncode == 0, verified.stderr
    assert not (job.path / "staging").exists() or not any((job.path / "staging").iterdir())


@pytest.mark.slow
def test_zs_with_two_ranks_equals_one_process(one_process: Store, job: Store, native_model: str) -> None:
    result = _torchrun(_zs(job, native_model))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 1 of 2:" in result.stdout and "complete: run zs-" in result.stdout
    _check_equal(one_process, job)
    with job.reader() as con:
        config = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
        n_samples = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert config["distributed"]["world_size"] == 2
    assert sorted(rank["rank"] for rank in config["distributed"]["ranks"]) == [0, 1]
    assert sum(rank["images"] for rank in config["distributed"]["ranks"]) == n_samples


@pytest.mark.slow
@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_a_killed_job_resumes_shard_by_shard_with_any_world_size(one_process: Store, job: Store, native_model: str,
                                                                   resume_ranks: int) -> None:
    killed = _torchrun(_zs(job, native_model), env={"KILL_RANK": "1", "KILL_AFTER_CHUNKS": "2"}, job=JOB)
    assert killed.returncode != 0
    staged = list((job.path / "staging").rglob("chunk-*.parquet"))
    assert staged, "the killed job left its finished shards staged"
    with job.reader() as con:
        assert con.execute("SELECT status FROM runs").fetchone() == ("running",)
    if resume_ranks == 1:  # without --resume the unfinished run is not touched
        again = _single(_zs(job, native_model))
        assert again.returncode == 2 and "ask to resume it" in again.stderr, again.stderr[-2000:]
    else:  # what rank 0 meets is raised on every rank, not left for the others to wait on (torchrun exits 1)
        again = _torchrun(_zs(job, native_model))
        assert again.returncode != 0 and again.stderr.count("ask to resume it") == 2, again.stderr[-2000:]
    resumed = (_torchrun(_zs(job, native_model, "--resume")) if resume_ranks == 2
               else _single(_zs(job, native_model, "--resume")))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _check_equal(one_process, job)


@pytest.mark.slow
def test_ranks_that_disagree_on_the_run_are_refused_before_any_work(job: Store, native_model: str) -> None:
    result = _torchrun(_zs(job, native_model), env={"SEED_OF_RANK": "1:7"}, job=JOB)
    assert result.returncode != 0
    assert "embedstore: error: the ranks of this job disagree on run" in result.stderr
    with job.reader() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM image_embeddings").fetchone() == (0,)


@pytest.mark.slow
def test_lp_under_torchrun_runs_on_rank_0_only(job: Store, native_model: str) -> None:
    assert _torchrun(_zs(job, native_model)).returncode == 0
    result = _torchrun(["extract", "--mode", "lp", "--model", native_model, "--data", "syn", "--store",
                        str(job.path), "--epochs", "1", "--workers", "0"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 1: lp runs in one process; rank 0 fits and writes it" in result.stdout
    with job.reader() as con:
        assert con.execute("SELECT count(*) FROM runs WHERE mode = 'lp' AND status = 'complete'").fetchone() == (1,)


def _ft_state(store: Store) -> dict[str, np.ndarray]:
    """The head weights and embeddings of the store's one ft run, from its checkpoint and table."""
    import torch

    with store.reader() as con:
        run_id = con.execute("SELECT run_id FROM runs WHERE mode = 'ft'").fetchone()[0]
        rows = con.execute("SELECT embedding FROM image_embeddings WHERE run_id = ? ORDER BY sample_id",
                           [run_id]).fetchall()
    state = torch.load(store.path / "artefacts" / run_id / "finetuned.pt", weights_only=True)
    return {"weight": state["head"]["weight"].numpy(), "bias": state["head"]["bias"].numpy(),
            "embeddings": np.array([r[0] for r in rows], dtype=np.float32)}


@pytest.mark.slow
def test_ft_with_two_ranks_equals_one_process_with_the_same_global_batch(tmp_path: Path, synthetic_dir: Path,
                                                                        native_model: str) -> None:
    stores = [_ingested(tmp_path / name, synthetic_dir) for name in ("one", "job")]
    args = ["extract", "--mode", "ft", "--protocol", "study", "--epochs", "1", "--batch-size", "10", "--model",
            native_model, "--data", "syn", "--workers", "0", "--chunk-size", "32"]
    assert _single([*args, "--store", str(stores[0].path)]).returncode == 0
    result = _torchrun([*args, "--store", str(stores[1].path)])
    assert result.returncode == 0, result.stderr[-2000:]
    one, job = _ft_state(stores[0]), _ft_state(stores[1])
    for name in ("weight", "bias", "embeddings"):
        np.testing.assert_allclose(job[name], one[name], atol=1e-4, err_msg=name)


def test_a_single_process_command_runs_on_rank_0_only(job: Store) -> None:
    command = [sys.executable, "-m", "embedstore", "sql", "SELECT count(*) AS n FROM samples", "--store", str(job.path)]
    rank_1 = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RANK": "1", "WORLD_SIZE": "2"})
    assert rank_1.returncode == 0 and rank_1.stdout.strip() == "rank 1 of 2: `embedstore sql` runs in one process; " \
                                                                 "rank 0 runs it"
    rank_0 = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RANK": "0", "WORLD_SIZE": "2"})
    assert rank_0.returncode == 0 and "120" in rank_0.stdout, rank_0.stderr


def test_verify_reports_the_staging_folder_a_complete_run_left(job: Store, native_model: str) -> None:
    assert _single(_zs(job, native_model)).returncode == 0
    with job.reader() as con:
        run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    (job.path / "staging" / run_id).mkdir(parents=True)
    assert _single(["store", "verify", "--store", str(job.path)]).returncode == 0  # an empty folder is no problem
    (job.path / "staging" / run_id / "chunk-00000000000000000001-16.parquet").write_bytes(b"left over")
    verified = _single(["store", "verify", "--store", str(job.path)])
    assert verified.returncode == 5
    assert f"MISMATCH staging/{run_id}: staging folder left by run {run_id}, which is complete" in verified.stderr
