"""Hostile environments and artefacts: a reachable model hub must never be contacted, and no stored
or cached file is ever unpickled — every store artefact is checked against the manifest first.

The hub is a fake one on 127.0.0.1 that counts requests; the CLI runs in a real process with the
offline switches removed from its environment, so only embedstore's own guarantees keep it offline.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from embedstore.errors import IntegrityError
from embedstore.store import Store

OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_REPO = "some/model"
#: A model id open_clip resolves on the hub, and a built-in whose pretrained tag lives on the hub.
HUB_MODELS = (f"hf-hub:{HUB_REPO}", "ViT-B-32:openai")


# ---------------------------------------------------------------------------------------------
# A fake hub
# ---------------------------------------------------------------------------------------------

@dataclass
class FakeHub:
    url: str
    requests: list[str]


def _tiny_config() -> bytes:
    from embedstore.shaped_models import OPENAI_MEAN, OPENAI_STD
    from tests.model_fixtures import TINY_TEXT_CFG

    return json.dumps({"model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": TINY_TEXT_CFG,
    }, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}).encode()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """An HTTP server on 127.0.0.1 that records every request; it serves an open_clip config and
    404s for everything else (what a hub without the weights would answer)."""
    seen: list[str] = []
    config = _tiny_config()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            seen.append(f"{self.command} {self.path}")
            if self.path.split("?")[0].endswith("/open_clip_config.json"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(config)))
                self.send_header("ETag", '"fake"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.end_headers()
                if body:
                    self.wfile.write(config)
                return
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 — the http.server API
            self._answer(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(False)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeHub(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def online_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_hub: FakeHub) -> dict[str, str]:
    """No offline switch in the environment (conftest and the Makefile set them), an empty Hugging
    Face cache, and every hub endpoint pointed at the fake hub."""
    for switch in OFFLINE_SWITCHES:
        monkeypatch.delenv(switch, raising=False)
    hf_home = tmp_path / "hf"
    hf_home.mkdir(exist_ok=True)
    env = {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(hf_home), "HF_HUB_ETAG_TIMEOUT": "30",
           "HF_HUB_DOWNLOAD_TIMEOUT": "30", "TORCH_HOME": str(tmp_path / "torch"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _cache_hub_model(hf_home: Path, repo: str, source: Path) -> None:
    """Put a model into the Hugging Face cache the way a download would (refs/main → snapshot)."""
    commit = "1" * 40
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
        shutil.copyfile(source / name, snapshot / name)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Tiny stores: a dataset and one fine-tuned run (ft on CPU is the slow part: done once)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FtStore:
    path: Path
    run_id: str
    model: str
    cache: Path


@pytest.fixture(scope="module")
def ft_store(tmp_path_factory: pytest.TempPathFactory) -> FtStore:
    """24 synthetic 64 px images ingested as `syn`, and one ft (study) run of the tiny native ViT."""
    from embedstore.extract import ExtractConfig, extract
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.synthetic import SampleConfig, write_sample
    from tests.model_fixtures import make_native_clip

    root = tmp_path_factory.mktemp("hostile-offline")
    cache = tmp_path_factory.getbasetemp() / "embedstore-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(cache))
        model = "local-dir:" + str(make_native_clip(root / "model"))
        write_sample(SampleConfig(out=root / "syn", n=24, seed=7, size=64, workers=1))
        store, _ = Store.init(root / "store")
        ingest(store, IngestConfig(path=root / "syn", name="syn"))
        run_id = extract(store, ExtractConfig(mode="ft", model=model, data="syn", protocol="study", epochs=1,
                                              batch_size=24, encode_batch_size=64, workers=0)).run_id
    return FtStore(store.path, run_id, model, cache)


@pytest.fixture
def ft_copy(ft_store: FtStore, tmp_path: Path) -> FtStore:
    """A private copy of the ft store that a test may damage."""
    target = tmp_path / "store"
    shutil.copytree(ft_store.path, target)
    return FtStore(target, ft_store.run_id, ft_store.model, ft_store.cache)


def _resume_command(store: FtStore) -> list[str]:
    return ["extract", "--mode", "ft", "--protocol", "study", "--model", store.model, "--data", "syn",
            "--epochs", "1", "--batch-size", "24", "--encode-batch-size", "64", "--workers", "0", "--resume",
            "--store", str(store.path)]


def _gradcam_command(store: FtStore, out: Path) -> list[str]:
    return ["gradcam", "--run", store.run_id, "--out", str(out), "--n", "1", "--device", "cpu",
            "--store", str(store.path)]


def _set_run(store_path: Path, run_id: str, **columns: str) -> None:
    store = Store.open(store_path)
    with store.writer("test") as writer, writer.transaction() as con:
        for column, value in columns.items():
            con.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", [value, run_id])


def _record(store_path: Path, relpath: str) -> None:
    """Make the manifest agree with the file as it is now (what a careful attacker would do)."""
    from embedstore.atomic import sha256_file

    store = Store.open(store_path)
    path = store.resolve(relpath)
    with store.writer("test") as writer, writer.transaction() as con:
        con.execute("UPDATE manifest SET sha256 = ?, bytes = ? WHERE path = ?",
                    [sha256_file(path), path.stat().st_size, relpath])


# ---------------------------------------------------------------------------------------------
# Offline: a model hub is never contacted
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_cli_refuses_a_hub_model_it_does_not_have_without_contacting_the_hub(
        ft_copy: FtStore, online_env: dict[str, str], fake_hub: FakeHub, run_cli) -> None:
    model = f"hf-hub:{HUB_REPO}"
    result = run_cli("extract", "--mode", "zs", "--model", model, "--data", "syn", "--workers", "0",
                     "--store", str(ft_copy.path))  # run_cli's time limit turns a hang into a failure
    assert fake_hub.requests == []
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith(f"embedstore: error: --model '{model}': cannot be loaded offline")
    assert "never downloads" in line and "local-dir:" in line
    with Store.open(ft_copy.path).reader() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]


@pytest.mark.slow
def test_the_cli_loads_a_cached_hub_model_from_the_cache_alone(
        ft_copy: FtStore, online_env: dict[str, str], fake_hub: FakeHub, run_cli) -> None:
    """With the model in the cache, an online huggingface_hub would still ask the hub for a newer commit."""
    _cache_hub_model(Path(online_env["HF_HOME"]), HUB_REPO, Path(ft_copy.model.removeprefix("local-dir:")))
    result = run_cli("extract", "--mode", "zs", "--model", f"hf-hub:{HUB_REPO}", "--data", "syn",
                     "--workers", "0", "--store", str(ft_copy.path))
    assert result.returncode == 0, result.stderr
    assert fake_hub.requests == []
    assert result.stdout.startswith("complete: run zs-")


@pytest.fixture
def online_session(monkeypatch: pytest.MonkeyPatch, online_env: dict[str, str], fake_hub: FakeHub) -> Path:
    """This process as a Python session that imported huggingface_hub online, before embedstore:
    its switches (read at import) say online and point at the fake hub. Returns HF_HOME."""
    from huggingface_hub import constants

    hf_home = Path(online_env["HF_HOME"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    return hf_home


@pytest.mark.parametrize("model", HUB_MODELS)
def test_models_not_in_the_cache_are_refused_without_a_request(
        model: str, online_session: Path, fake_hub: FakeHub) -> None:
    from embedstore.models import ModelUnavailableError, load_model

    with pytest.raises(ModelUnavailableError, match="cannot be loaded offline") as caught:
        load_model(model)
    assert fake_hub.requests == []
    assert "never downloads" in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreachable_hub_is_not_retried(online_session: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub retries a hub it cannot reach for about 42 s; embedstore never asks it."""
    from huggingface_hub import constants

    from embedstore.models import ModelUnavailableError, load_model

    with socket.socket() as probe:                       # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", closed + "/{repo_id}/resolve/{revision}/{filename}")
    attempts: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        attempts.append(address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    for model in HUB_MODELS:
        with pytest.raises(ModelUnavailableError):
            load_model(model)
    assert attempts == []  # not one connection attempt, so nothing to retry


def test_a_cached_hub_model_loads_offline_in_a_session_that_imported_the_hub_online(
        online_session: Path, fake_hub: FakeHub, ft_store: FtStore) -> None:
    from huggingface_hub import constants

    from embedstore.models import load_model, weights_sha256

    _cache_hub_model(online_session, HUB_REPO, Path(ft_store.model.removeprefix("local-dir:")))
    loaded = load_model(f"hf-hub:{HUB_REPO}")
    assert loaded.sha256 == load_model(ft_store.model).sha256 == weights_sha256(loaded.model)
    assert fake_hub.requests == []
    assert constants.HF_HUB_OFFLINE is False          # the session's own setting is given back


def test_a_hub_config_without_cached_weights_is_refused_not_randomly_initialised(
        online_session: Path, fake_hub: FakeHub, ft_store: FtStore) -> None:
    from embedstore.models import ModelUnavailableError, load_model

    _cache_hub_model(online_session, HUB_REPO, Path(ft_store.model.removeprefix("local-dir:")))
    next((online_session / "hub").rglob("open_clip_pytorch_model.bin")).unlink()
    with pytest.raises(ModelUnavailableError, match="weights are not in the Hugging Face cache"):
        load_model(f"hf-hub:{HUB_REPO}")
    assert fake_hub.requests == []


def test_models_list_and_gradcam_of_a_hub_run_make_no_request(
        online_session: Path, fake_hub: FakeHub, ft_copy: FtStore) -> None:
    import torch

    from embedstore.cam.subject import load_subject
    from embedstore.models import ModelUnavailableError, list_models

    entries = {entry.name: entry for entry in list_models()}
    assert not entries["biomedclip"].available
    _set_run(ft_copy.path, ft_copy.run_id, model_id=f"hf-hub:{HUB_REPO}")
    with pytest.raises(ModelUnavailableError, match=f"model 'hf-hub:{HUB_REPO}': cannot be loaded offline"):
        load_subject(Store.open(ft_copy.path), ft_copy.run_id, torch.device("cpu"))
    assert fake_hub.requests == []


def test_bad_hub_ids_and_tags_are_named(online_session: Path, fake_hub: FakeHub) -> None:
    from embedstore.errors import InputError
    from embedstore.models import load_model

    with pytest.raises(InputError, match="not a Hugging Face repo id"):
        load_model("hf-hub:../../etc")
    with pytest.raises(InputError, match="no pretrained tag 'nope'"):
        load_model("ViT-B-32:nope")
    assert fake_hub.requests == []


def test_no_connection_can_be_opened_while_a_model_loads(fake_hub: FakeHub) -> None:
    """The last line of defence: any loader path that ignores the offline switches (open_clip's URL
    downloads, torch.hub) meets a refused connection, not the network."""
    from embedstore.models import offline

    host, port = fake_hub.url.removeprefix("http://").split(":")
    with offline():
        with pytest.raises(OSError, match="embedstore"):
            socket.create_connection((host, int(port)), timeout=5)
        with pytest.raises(OSError):
            urllib.request.urlopen(fake_hub.url + "/x.pt", timeout=5)
        for family, address in ((socket.AF_INET, (host, int(port))), (socket.AF_INET6, ("::1", int(port)))):
            try:
                raw = socket.socket(family)
            except OSError:                                  # no IPv6 on this machine
                continue
            with raw, pytest.raises(OSError, match="embedstore"):
                raw.connect(address)
        left, right = socket.socketpair()                    # local (AF_UNIX) sockets still work
        left.close()
        right.close()
    assert fake_hub.requests == []
    with socket.create_connection((host, int(port)), timeout=5):
        pass                                                 # and everything is back afterwards


def test_importing_embedstore_sets_the_offline_switches_before_any_hub_import(
        online_env: dict[str, str]) -> None:
    import subprocess
    import sys

    code = ("import embedstore, huggingface_hub.constants as c, os; "
            "print(c.HF_HUB_OFFLINE, os.environ['TRANSFORMERS_OFFLINE'], os.environ['HF_DATASETS_OFFLINE'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["True", "1", "1"], out.stderr


# ---------------------------------------------------------------------------------------------
# No unpickling: every artefact checked against the manifest, loaded as tensors only
# ---------------------------------------------------------------------------------------------

class _Plant:
    """Unpickling this creates the marker file: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _hostile_pickle(marker: Path) -> bytes:
    return pickle.dumps({"visual": _Plant(marker), "head": {}, "details": {}, "train_seconds": 1.0})


def _hostile_torch_save(marker: Path) -> bytes:
    """The same payload in torch.save's zip format (the format finetuned.pt really has)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"visual": _Plant(marker), "head": {}}, buffer)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_replaced_checkpoint_is_refused_by_resume_and_gradcam_before_it_is_read(
        ft_copy: FtStore, tmp_path: Path, run_cli) -> None:
    relpath = f"artefacts/{ft_copy.run_id}/finetuned.pt"
    marker = tmp_path / "code-ran"
    (ft_copy.path / relpath).write_bytes(_hostile_pickle(marker))
    cam = run_cli(*_gradcam_command(ft_copy, tmp_path / "maps"))
    assert not marker.exists()
    assert cam.returncode == 5, cam.stderr
    assert relpath in _one_error_line(cam.stderr)
    _set_run(ft_copy.path, ft_copy.run_id, status="running")        # training done, encoding interrupted
    resumed = run_cli(*_resume_command(ft_copy))
    assert not marker.exists()
    assert resumed.returncode == 5, resumed.stderr
    line = _one_error_line(resumed.stderr)
    assert line.startswith("embedstore: error: ") and relpath in line and "embedstore store verify" in line


def test_a_replaced_checkpoint_with_a_matching_manifest_is_still_never_unpickled(
        ft_copy: FtStore, tmp_path: Path) -> None:
    import torch

    from embedstore.cam.subject import load_subject
    from embedstore.extract import ExtractConfig, extract

    relpath = f"artefacts/{ft_copy.run_id}/finetuned.pt"
    marker = tmp_path / "code-ran"
    (ft_copy.path / relpath).write_bytes(_hostile_pickle(marker))
    _record(ft_copy.path, relpath)
    store = Store.open(ft_copy.path)
    with pytest.raises(IntegrityError, match="unpickl"):
        load_subject(store, ft_copy.run_id, torch.device("cpu"))
    assert not marker.exists()
    _set_run(ft_copy.path, ft_copy.run_id, status="running")
    with pytest.raises(IntegrityError, match="unpickl"):
        extract(store, ExtractConfig(mode="ft", model=ft_copy.model, data="syn", protocol="study", epochs=1,
                                     batch_size=24, encode_batch_size=64, workers=0, resume=True))
    assert not marker.exists()


@pytest.mark.parametrize("payload", [_hostile_pickle, _hostile_torch_save], ids=["pickle", "torch-zip"])
def test_a_manifest_consistent_pickle_is_refused_not_run(payload, tmp_store: Store, tmp_path: Path) -> None:
    from embedstore.integrity import load_tensors

    marker = tmp_path / "code-ran"
    relpath = "artefacts/run-x/finetuned.pt"
    with tmp_store.writer("test") as writer:
        writer.write_artefact(relpath, "checkpoint", lambda handle: handle.write(payload(marker)), run_id="run-x")
    with pytest.raises(IntegrityError, match="finetuned.pt") as caught:
        load_tensors(tmp_store, relpath)
    assert not marker.exists()
    assert "\n" not in str(caught.value)


def test_a_head_with_pickled_objects_is_refused(tmp_store: Store, tmp_path: Path) -> None:
    from embedstore.integrity import load_arrays

    marker = tmp_path / "code-ran"
    relpath = "artefacts/run-x/head.npz"
    objects = np.array([_Plant(marker)], dtype=object)
    with tmp_store.writer("test") as writer:
        writer.write_artefact(relpath, "head", lambda handle: np.savez(handle, weight=objects), run_id="run-x")
    with pytest.raises(IntegrityError, match="head.npz"):
        load_arrays(tmp_store, relpath)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing", "unrecorded", "grown", "changed"])
def test_every_artefact_read_is_checked_against_the_manifest(damage: str, tmp_store: Store) -> None:
    from embedstore.integrity import read_artefact

    relpath = "artefacts/run-x/head.npz"
    with tmp_store.writer("test") as writer:
        writer.write_artefact(relpath, "head", lambda handle: np.savez(handle, w=np.ones(3)), run_id="run-x")
    assert read_artefact(tmp_store, relpath) == tmp_store.resolve(relpath).read_bytes()
    path = tmp_store.resolve(relpath)
    if damage == "missing":
        path.unlink()
    elif damage == "unrecorded":
        with tmp_store.writer("test") as writer, writer.transaction() as con:
            con.execute("DELETE FROM manifest WHERE path = ?", [relpath])
    elif damage == "grown":
        path.write_bytes(path.read_bytes() + b"\0")
    else:
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="store verify") as caught:
        read_artefact(tmp_store, relpath)
    assert relpath in str(caught.value)


def test_a_changed_faiss_index_is_refused_before_it_is_parsed(ft_copy: FtStore) -> None:
    from embedstore.analyses.neighbors import nearest

    relpath = f"indices/{ft_copy.run_id}.image_embeddings.faiss"
    path = ft_copy.path / relpath
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    store = Store.open(ft_copy.path)
    with store.reader() as con:
        sample = con.execute("SELECT min(sample_id) FROM image_embeddings WHERE run_id = ?",
                             [ft_copy.run_id]).fetchall()[0][0]
    with pytest.raises(IntegrityError, match="store verify") as caught:
        nearest(store, ft_copy.run_id, sample=int(sample))
    assert relpath in str(caught.value)


def test_the_checkpoint_holds_tensors_and_plain_values_only_and_resume_uses_it(ft_copy: FtStore) -> None:
    import torch

    from embedstore.extract import ExtractConfig, extract

    path = ft_copy.path / f"artefacts/{ft_copy.run_id}/finetuned.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) >= {"visual", "head"}
    store = Store.open(ft_copy.path)
    with store.reader() as con:
        before = con.execute("SELECT sample_id, label, logit FROM scores WHERE run_id = ? ORDER BY ALL",
                             [ft_copy.run_id]).fetchall()
    _set_run(ft_copy.path, ft_copy.run_id, status="running")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(ft_copy.cache))
        result = extract(store, ExtractConfig(mode="ft", model=ft_copy.model, data="syn", protocol="study", epochs=1,
                                              batch_size=24, encode_batch_size=64, workers=0, resume=True))
    assert result.run_id == ft_copy.run_id and result.status == "complete"
    with store.reader() as con:
        after = con.execute("SELECT sample_id, label, logit FROM scores WHERE run_id = ? ORDER BY ALL",
                            [ft_copy.run_id]).fetchall()
    np.testing.assert_allclose(np.array([r[2] for r in after]), np.array([r[2] for r in before]), rtol=1e-5)


def test_model_weights_that_need_unpickling_are_refused(tmp_path: Path, ft_store: FtStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A local-dir model, and the demo model's cache entry with its record updated to match."""
    from embedstore.atomic import sha256_file
    from embedstore.demo_model import RECORD_NAME, WEIGHTS_NAME, demo_model_dir
    from embedstore.models import ModelUnavailableError, load_model

    marker = tmp_path / "code-ran"
    folder = tmp_path / "local"
    shutil.copytree(Path(ft_store.model.removeprefix("local-dir:")), folder)
    (folder / WEIGHTS_NAME).write_bytes(_hostile_torch_save(marker))
    with pytest.raises(ModelUnavailableError, match="unpickl"):
        load_model(f"local-dir:{folder}")
    assert not marker.exists()

    monkeypatch.setenv("EMBEDSTORE_CACHE", str(tmp_path / "cache"))
    demo = demo_model_dir()
    shutil.copytree(folder, demo)
    (demo / RECORD_NAME).write_text(json.dumps({"weights_file_sha256": sha256_file(demo / WEIGHTS_NAME)}))
    with pytest.raises(ModelUnavailableError, match="unpickl"):
        load_model("demo")
    assert not marker.exists()


def test_the_tensor_cache_never_unpickles(tmp_path: Path) -> None:
    from embedstore.images import TensorCache

    marker = tmp_path / "code-ran"
    cache = TensorCache(tmp_path, "key")
    sha = "ab" * 32
    path = cache._path(sha)
    path.parent.mkdir(parents=True)
    np.save(path, np.array([_Plant(marker)], dtype=object), allow_pickle=True)
    assert cache.get(sha) is None                    # rebuilt from the image, never unpickled
    assert not marker.exists()
