"""Extraction: each mode and protocol, both ViT kinds, lp's no-re-encode guarantee, resume after a
kill, provenance, and the offline-load error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

import embedstore.extract as extract_module
from embedstore.embeddings import read_image_embeddings
from embedstore.errors import InputError, StoreBusyError
from embedstore.extract import ExtractConfig, extract
from embedstore.integrity import verify_store
from embedstore.models import ModelUnavailableError, load_model, weights_sha256
from embedstore.store import Store


def _run(store: Store, model: str, mode: str, protocol: str = "multilabel", **options: object):
    return extract(store, ExtractConfig(mode=mode, model=model, data="syn", protocol=protocol, epochs=2,
                                        encode_batch_size=32, **options))


def _scores(store: Store, run_id: str, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with store.reader() as con:
        ids, embeddings = read_image_embeddings(con, run_id)
        rows = con.execute("SELECT sample_id, label, logit FROM scores WHERE run_id = ?", [run_id]).fetchall()
    index = {int(s): i for i, s in enumerate(ids)}
    matrix = np.full((len(ids), len(labels)), np.nan)
    for sample_id, label, logit in rows:
        matrix[index[int(sample_id)], labels.index(label)] = logit
    return embeddings, matrix


def _text(store: Store, run_id: str) -> list[tuple[str, str, np.ndarray]]:
    with store.reader() as con:
        rows = con.execute("SELECT label, prompt, embedding FROM text_embeddings WHERE run_id = ? "
                           "ORDER BY rowid", [run_id]).fetchall()
    return [(label, prompt, np.array(vector)) for label, prompt, vector in rows]


def _config(store: Store, run_id: str) -> dict:
    with store.reader() as con:
        return json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_study_scores_are_raw_dot_products_with_bare_names(synthetic_store: Store, native_model: str) -> None:
    result = _run(synthetic_store, native_model, "zs", protocol="study")
    labels = _config(synthetic_store, result.run_id)["labels"]
    text = _text(synthetic_store, result.run_id)
    assert [prompt for _, prompt, _ in text] == labels
    embeddings, scores = _scores(synthetic_store, result.run_id, labels)
    expected = embeddings.astype(np.float64) @ np.stack([vector for *_, vector in text]).T
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert verify_store(synthetic_store).ok


@pytest.mark.parametrize("prompts", ["templates", "posneg"])
def test_zero_shot_multilabel_scores_are_scaled_cosines(synthetic_store: Store, native_model: str, prompts: str) -> None:
    result = _run(synthetic_store, native_model, "zs", prompts=prompts)
    config = _config(synthetic_store, result.run_id)
    labels, scale = config["labels"], config["logit_scale"]
    embeddings, scores = _scores(synthetic_store, result.run_id, labels)
    text = _text(synthetic_store, result.run_id)
    for j, label in enumerate(labels):
        negative_prompt = f"no {label.lower()}" if prompts == "posneg" else None
        positive = [v for lab, prompt, v in text if lab == label and prompt != negative_prompt]
        expected = scale * _unit(embeddings) @ _unit(_unit(np.stack(positive)).mean(0))
        if prompts == "posneg":
            negative = [v for lab, prompt, v in text if lab == label and prompt == negative_prompt]
            assert len(positive) == len(negative) == 1
            expected = expected - scale * _unit(embeddings) @ _unit(negative[0])
        else:
            assert len(positive) == 5
        np.testing.assert_allclose(scores[:, j], expected, rtol=1e-4, atol=1e-4)


def test_linear_probe_never_encodes_an_image_when_the_encoder_is_stored(
        synthetic_store: Store, native_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    zs = _run(synthetic_store, native_model, "zs")

    def forbidden(*args: object, **kwargs: object) -> float:
        raise AssertionError("lp encoded images although the encoder's embeddings are stored")

    monkeypatch.setattr(extract_module, "encode_into_run", forbidden)
    lp = _run(synthetic_store, native_model, "lp")
    assert lp.embeddings_from == zs.run_id and lp.extract_seconds == 0
    with synthetic_store.reader() as con:
        zs_ids, zs_vectors = read_image_embeddings(con, zs.run_id)
        lp_ids, lp_vectors = read_image_embeddings(con, lp.run_id)
    np.testing.assert_array_equal(zs_ids, lp_ids)
    np.testing.assert_array_equal(zs_vectors, lp_vectors)
    assert verify_store(synthetic_store).ok


@pytest.mark.parametrize("protocol", ["study", "multilabel"])
def test_linear_probe_scores_are_its_stored_heads_logits(synthetic_store: Store, native_model: str,
                                                         protocol: str) -> None:
    lp = _run(synthetic_store, native_model, "lp", protocol=protocol)
    assert lp.embeddings_from is None and lp.extract_seconds > 0
    config = _config(synthetic_store, lp.run_id)
    embeddings, scores = _scores(synthetic_store, lp.run_id, config["labels"])
    head = np.load(synthetic_store.resolve(f"artefacts/{lp.run_id}/head.npz"))
    features = _unit(embeddings) if bool(head["normalize_input"]) else embeddings
    np.testing.assert_allclose(scores, features.astype(np.float64) @ head["weight"].T + head["bias"], rtol=1e-4,
                               atol=1e-4)
    assert list(head["labels"]) == config["labels"]
    assert config["fit"]["recipe"] == {"study": "study", "multilabel": "logistic-lbfgs"}[protocol]


@pytest.mark.parametrize("model_fixture", ["native_model", "biomedclip_shaped"])
@pytest.mark.parametrize("protocol", ["study", "multilabel"])
def test_zs_lp_and_ft_on_both_vit_kinds(synthetic_store: Store, model_fixture: str, protocol: str,
                                       request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_fixture)
    zs = _run(synthetic_store, model, "zs")
    lp = _run(synthetic_store, model, "lp", protocol=protocol)
    assert lp.embeddings_from == zs.run_id
    ft = _run(synthetic_store, model, "ft", protocol=protocol)
    assert ft.train_seconds is not None and ft.train_seconds > 0
    with synthetic_store.reader() as con:
        _, before = read_image_embeddings(con, zs.run_id)
        _, after = read_image_embeddings(con, ft.run_id)
        checkpoint = con.execute("SELECT sha256 FROM manifest WHERE kind = 'checkpoint' AND run_id = ?",
                                 [ft.run_id]).fetchall()
    assert before.shape == after.shape and not np.allclose(before, after)
    assert len(checkpoint) == 1 and _config(synthetic_store, ft.run_id)["checkpoint_sha256"] == checkpoint[0][0]
    assert verify_store(synthetic_store).ok


def test_biomedclip_shaped_model_goes_through_zero_shot(synthetic_store: Store, biomedclip_shaped: str) -> None:
    loaded = load_model(biomedclip_shaped)
    assert hasattr(loaded.model.visual, "trunk") and loaded.image_size == 112
    result = _run(synthetic_store, biomedclip_shaped, "zs", protocol="study")
    with synthetic_store.reader() as con:
        assert con.execute("SELECT count(*), min(len(embedding)) FROM image_embeddings WHERE run_id = ?",
                           [result.run_id]).fetchall() == [(120, loaded.embed_dim)]


def test_asking_again_reuses_the_complete_run(synthetic_store: Store, native_model: str) -> None:
    first = _run(synthetic_store, native_model, "zs")
    again = _run(synthetic_store, native_model, "zs")
    assert again.run_id == first.run_id and again.status == "reused"
    other = _run(synthetic_store, native_model, "zs", seed=7)
    assert other.run_id != first.run_id


def test_provenance_is_recorded(synthetic_store: Store, native_model: str) -> None:
    result = _run(synthetic_store, native_model, "zs", protocol="study")
    with synthetic_store.reader() as con:
        row = con.execute("SELECT r.model_id, r.model_sha256, r.device, r.versions, r.config, r.prompt_set, "
                          "r.started_at, r.finished_at, d.manifest_sha256 FROM runs r JOIN datasets d USING "
                          "(dataset_id) WHERE run_id = ?", [result.run_id]).fetchall()[0]
    model_id, sha, device, versions, config, prompt_set, started, finished, manifest = row
    assert model_id == native_model and prompt_set == "names"
    assert sha == weights_sha256(load_model(native_model).model)
    assert device.startswith("cpu")
    versions = json.loads(versions)
    assert {"python", "torch", "open_clip_torch", "duckdb", "faiss-cpu", "embedstore"} <= set(versions)
    config = json.loads(config)
    assert config["dataset_manifest_sha256"] == manifest and config["seed"] == 42
    assert config["protocol"] == "study" and config["prompts"] == config["labels"]
    assert started <= finished


def test_unknown_dataset_mode_and_missing_cuda_are_clear_errors(synthetic_store: Store, native_model: str) -> None:
    with pytest.raises(InputError, match="dataset 'nope': no such dataset"):
        extract(synthetic_store, ExtractConfig(mode="zs", model=native_model, data="nope"))
    with pytest.raises(InputError, match="mode 'xx': choose one of zs, lp, ft"):
        extract(synthetic_store, ExtractConfig(mode="xx", model=native_model, data="syn"))
    if not __import__("torch").cuda.is_available():
        with pytest.raises(InputError, match="device 'cuda': no CUDA device"):
            extract(synthetic_store, ExtractConfig(mode="zs", model=native_model, data="syn", device="cuda"))


def test_models_that_are_not_on_this_machine_fail_offline_with_help(
        synthetic_store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_cli) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for model_id in ("biomedclip", "hf-hub:someone/not-cached", "ViT-B-32:openai"):
        with pytest.raises(ModelUnavailableError, match="cannot be loaded offline") as caught:
            load_model(model_id)
        assert "local-dir:" in str(caught.value)
    with pytest.raises(InputError, match="unknown"):
        load_model("NoSuchArchitecture")
    with pytest.raises(ModelUnavailableError, match="no open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")
    result = run_cli("extract", "--mode", "zs", "--model", "biomedclip", "--data", "syn",
                     "--store", str(synthetic_store.path), env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("embedstore: error: --model")


def test_models_list_shows_where_each_loads_from(run_cli) -> None:
    listing = run_cli("models", "list")
    assert listing.returncode == 0
    assert "biomedclip" in listing.stdout and "microsoft/BiomedCLIP" in listing.stdout
    assert "demo" in listing.stdout and "ViT-B-16" in listing.stdout


def _embedding_rows(store: Store) -> int:
    try:
        with store.reader(wait_seconds=0.5) as con:
            return int(con.execute("SELECT count(*) FROM image_embeddings").fetchall()[0][0])
    except StoreBusyError:  # the writer holds the file for a moment
        return 0


def _wait_for_rows(store: Store, proc: subprocess.Popen[bytes], rows: int, log_path: Path) -> None:
    """Wait until the extraction in `proc` has committed `rows` embeddings, however long that takes.
    The guard only turns a hung extraction into a failure instead of a stalled suite."""
    guard = time.monotonic() + 900
    while _embedding_rows(store) < rows:
        if proc.poll() is not None:
            pytest.fail(f"the extraction ended (exit {proc.returncode}) before {rows} rows: {log_path.read_text()}")
        if time.monotonic() > guard:
            pytest.fail(f"the extraction committed fewer than {rows} rows in 15 minutes: it hangs")
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_extraction_resumes_to_exactly_one_row_per_sample(tmp_store: Store, tmp_path: Path,
                                                                 native_model: str, run_cli) -> None:
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.synthetic import SampleConfig, write_sample

    n = 400
    write_sample(SampleConfig(out=tmp_path / "big", n=n, size=64, workers=1))
    ingest(tmp_store, IngestConfig(path=tmp_path / "big", name="syn"))
    command = [sys.executable, "-m", "embedstore.cli", "extract", "--mode", "zs", "--model", native_model,
               "--data", "syn", "--encode-batch-size", "2", "--chunk-size", "2", "--store", str(tmp_store.path)]
    log_path = tmp_path / "stderr.txt"
    with open(log_path, "w") as log_file:  # a file, not a pipe: nobody reads it while the extraction runs
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file, env=os.environ.copy())
    try:
        _wait_for_rows(tmp_store, proc, 10, log_path)  # the progress signal: killed once 10 rows are committed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with tmp_store.reader() as con:
        (run_id, status), = con.execute("SELECT run_id, status FROM runs").fetchall()
        partial = con.execute("SELECT count(*) FROM image_embeddings").fetchall()[0][0]
    assert status == "running" and 10 <= partial < n
    assert verify_store(tmp_store).ok
    refused = run_cli(*command[3:])
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_cli(*command[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with tmp_store.reader() as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("complete",)]
        assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM image_embeddings").fetchall() == [(n, n)]
        assert con.execute("SELECT count(*) FROM samples s ANTI JOIN image_embeddings e USING (sample_id)"
                           ).fetchall() == [(0,)]
    assert verify_store(tmp_store).ok
    assert run_id in resumed.stdout


def test_demo_pretraining_is_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.demo_model as demo

    small = demo.DemoConfig(n_images=40, render_size=64, image_size=32, vision_layers=1, text_layers=1,
                            vision_width=32, text_width=32, embed_dim=16, epochs=1, batch_size=20)
    first = demo.ensure_demo_model(small, cache=tmp_path / "a")
    second = demo.ensure_demo_model(small, cache=tmp_path / "b")
    assert (first / demo.WEIGHTS_NAME).read_bytes() == (second / demo.WEIGHTS_NAME).read_bytes()
    monkeypatch.setattr(demo, "_pretrain", lambda *a: (_ for _ in ()).throw(AssertionError("retrained")))
    assert demo.ensure_demo_model(small, cache=tmp_path / "a") == first
    monkeypatch.setattr(demo, "DEFAULT_CONFIG", small)
    monkeypatch.setenv("EMBEDSTORE_CACHE", str(tmp_path / "a"))
    loaded = load_model("demo")
    assert loaded.open_clip_id == f"local-dir:{first}" and loaded.embed_dim == 16
    (first / demo.WEIGHTS_NAME).write_bytes(b"tampered")
    with pytest.raises(AssertionError, match="retrained"):
        demo.ensure_demo_model(small, cache=tmp_path / "a")


def test_store_stays_consistent_when_a_mode_fails(synthetic_store: Store, native_model: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setitem(extract_module.MODES, "zs", broken)
    with pytest.raises(RuntimeError):
        _run(synthetic_store, native_model, "zs")
    with synthetic_store.reader() as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]
        assert con.execute("SELECT count(*) FROM scores").fetchall() == [(0,)]
    assert verify_store(synthetic_store).ok
    con = duckdb.connect(str(synthetic_store.db_path), read_only=True)
    con.close()
