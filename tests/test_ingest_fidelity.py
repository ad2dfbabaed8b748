"""Ingest fidelity: byte-identical images under different uids (reported, listed, kept out of two
splits by `stratified`, counted under `study`/`given`), and raw label values kept beside the derived
positive (No Finding rule) that every analysis reads."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from embedstore import queries
from embedstore.errors import SchemaVersionError
from embedstore.ingest import IngestConfig, ingest
from embedstore.store import Store, append_rows
from tests.stored import write_manifest

LABELS = ["Cardiomegaly", "Edema", "No Finding"]
N_UNIQUE = 40
N_COPIES = 10  # d{i} repeats u{i}'s image under a new uid, for i < N_COPIES


def _png(path: Path, seed: int) -> None:
    """A tiny PNG whose bytes differ for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def _duplicates_dataset(folder: Path, split_of: dict[str, str] | None = None) -> Path:
    """40 uids with their own image, 10 more uids whose image repeats one of those byte for byte,
    and a chain: uid ca's image = one of cb's images, cb's other image = cc's image."""
    folder.mkdir()
    rows = []

    def add(uid: str, name: str, i: int) -> None:
        row = {"path": name, "uid": uid, "Cardiomegaly": "1" if i % 3 == 0 else "0",
               "Edema": "1" if i % 4 == 0 else "", "No Finding": ""}
        if split_of is not None:
            row["split"] = split_of.get(uid, ("train", "val", "test")[i % 3])
        rows.append(row)

    for i in range(N_UNIQUE):
        _png(folder / f"u{i}.png", i)
        add(f"u{i}", f"u{i}.png", i)
    for i in range(N_COPIES):
        shutil.copyfile(folder / f"u{i}.png", folder / f"d{i}.png")
        add(f"d{i}", f"d{i}.png", i)
    _png(folder / "ca1.png", 1000)
    _png(folder / "cb2.png", 1001)
    shutil.copyfile(folder / "ca1.png", folder / "cb1.png")
    shutil.copyfile(folder / "cb2.png", folder / "cc1.png")
    for uid, name in (("ca", "ca1.png"), ("cb", "cb1.png"), ("cb", "cb2.png"), ("cc", "cc1.png")):
        add(uid, name, 1)
    header = ["path", "uid", *(["split"] if split_of is not None else []), *LABELS]
    return write_manifest(folder, rows, header)


def _samples(store: Store, name: str) -> dict[str, tuple[str, str]]:
    """filename -> (uid, split)."""
    with store.reader() as con:
        rows = con.execute("SELECT s.filename, s.uid, s.split FROM samples s JOIN datasets d USING (dataset_id) "
                           "WHERE d.name = ?", [name]).fetchall()
    return {filename: (uid, split) for filename, uid, split in rows}


def _checks(store: Store, name: str) -> dict[str, int]:
    with store.reader() as con:
        return json.loads(con.execute("SELECT checks FROM datasets WHERE name = ?", [name]).fetchone()[0])


def _named(store: Store, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with store.reader() as con:
        return con.execute(queries.load(query).text, params).fetchall()


IDENTICAL_GROUPS = N_COPIES + 2  # the pairs, and the chain's two pairs
IDENTICAL_IMAGES = 2 * IDENTICAL_GROUPS


# ---------------------------------------------------------------------------------------------
# Item 7: identical images
# ---------------------------------------------------------------------------------------------

def test_identical_images_are_reported_counted_and_listed(tmp_store: Store, tmp_path: Path) -> None:
    result = ingest(tmp_store, IngestConfig(path=_duplicates_dataset(tmp_path / "d"), name="dup"))
    found = [w for w in result.warnings if "byte-identical" in w]
    assert found and f"{IDENTICAL_GROUPS} group(s) of byte-identical images ({IDENTICAL_IMAGES} images" in found[0]
    checks = _checks(tmp_store, "dup")
    assert checks["identical_image_groups"] == IDENTICAL_GROUPS
    assert checks["identical_images"] == IDENTICAL_IMAGES
    listed = _named(tmp_store, "duplicate_images", {"dataset": "dup"})
    assert len(listed) == IDENTICAL_GROUPS
    samples = _samples(tmp_store, "dup")
    with tmp_store.reader() as con:
        sha_of = dict(con.execute("SELECT filename, image_sha256 FROM samples").fetchall())
        id_of = dict(con.execute("SELECT filename, sample_id FROM samples").fetchall())
    expected_groups = [{f"u{i}.png", f"d{i}.png"} for i in range(N_COPIES)] + [{"ca1.png", "cb1.png"},
                                                                                {"cb2.png", "cc1.png"}]
    by_files = {frozenset(row[4]): row for row in listed}
    assert set(by_files) == {frozenset(g) for g in expected_groups}
    for files, (sha, n_images, sample_ids, uids, filenames, splits, crosses) in by_files.items():
        assert {sha_of[f] for f in files} == {sha} and n_images == 2
        assert sample_ids == [id_of[f] for f in filenames] and sample_ids == sorted(sample_ids)
        assert uids == [samples[f][0] for f in filenames] and splits == [samples[f][1] for f in filenames]
        assert crosses == (len(set(splits)) > 1)
    assert _named(tmp_store, "duplicate_images", {"dataset": "no such"}) == []


def test_stratified_puts_every_group_of_identical_images_in_one_split(tmp_store: Store, tmp_path: Path) -> None:
    ingest(tmp_store, IngestConfig(path=_duplicates_dataset(tmp_path / "d"), name="dup", split="stratified"))
    samples = _samples(tmp_store, "dup")
    for i in range(N_COPIES):
        assert samples[f"u{i}.png"][1] == samples[f"d{i}.png"][1], i
    assert len({samples[f][1] for f in ("ca1.png", "cb1.png", "cb2.png", "cc1.png")}) == 1  # linked through cb
    uid_splits: dict[str, set[str]] = {}
    for uid, split in samples.values():
        uid_splits.setdefault(uid, set()).add(split)
    assert all(len(s) == 1 for s in uid_splits.values())
    assert {split for _, split in samples.values()} == {"train", "val", "test"}
    checks = _checks(tmp_store, "dup")
    assert checks["identical_image_groups"] == IDENTICAL_GROUPS
    assert checks["cross_split_duplicate_groups"] == 0 and checks["cross_split_duplicate_images"] == 0
    assert all(not row[6] for row in _named(tmp_store, "duplicate_images", {"dataset": "dup"}))


def test_study_split_is_kept_and_its_cross_split_duplicates_are_counted(tmp_store: Store, tmp_path: Path) -> None:
    result = ingest(tmp_store, IngestConfig(path=_duplicates_dataset(tmp_path / "d"), name="dup", split="study"))
    samples = _samples(tmp_store, "dup")
    with tmp_store.reader() as con:
        uids = list(dict.fromkeys(r[0] for r in con.execute("SELECT uid FROM samples ORDER BY sample_id").fetchall()))
    train, rest = train_test_split(uids, test_size=0.30, random_state=42, shuffle=True)
    val, test = train_test_split(rest, test_size=0.50, random_state=42, shuffle=True)
    expected = {u: "train" for u in train} | {u: "val" for u in val} | {u: "test" for u in test}
    assert all(expected[uid] == split for uid, split in samples.values())
    groups = [(f"u{i}", f"d{i}") for i in range(N_COPIES)] + [("ca", "cb"), ("cb", "cc")]
    crossing = [g for g in groups if expected[g[0]] != expected[g[1]]]
    assert crossing  # the study split does put some copies apart: that is what is counted
    checks = _checks(tmp_store, "dup")
    assert checks["cross_split_duplicate_groups"] == len(crossing)
    assert checks["cross_split_duplicate_images"] == 2 * len(crossing)
    assert any(f"{len(crossing)} group(s) of byte-identical images ({2 * len(crossing)} images) sit in more than "
               "one split" in w for w in result.warnings)
    assert sum(1 for row in _named(tmp_store, "duplicate_images", {"dataset": "dup"}) if row[6]) == len(crossing)


def test_given_split_is_kept_and_counted_from_the_shell(tmp_store: Store, tmp_path: Path, run_cli) -> None:
    apart = {"u0": "train", "d0": "test", "u1": "val", "d1": "train", "u2": "test", "d2": "test",
             "ca": "train", "cb": "train", "cc": "val"}
    manifest = _duplicates_dataset(tmp_path / "d", split_of=apart)
    store = ["--store", str(tmp_store.path)]
    shell = run_cli("ingest", str(manifest), "--name", "dup", *store)
    assert shell.returncode == 0, shell.stderr
    with open(manifest, newline="") as handle:
        given = {row["path"]: row["split"] for row in csv.DictReader(handle)}
    assert {f: split for f, (_, split) in _samples(tmp_store, "dup").items()} == given
    crossing = sum(given[f"u{i}.png"] != given[f"d{i}.png"] for i in range(N_COPIES)) + 1  # cb-cc, not ca-cb
    assert f"{IDENTICAL_GROUPS} group(s) of byte-identical images ({IDENTICAL_IMAGES} images" in shell.stderr
    assert f"{crossing} group(s) of byte-identical images ({2 * crossing} images) sit in more than one split" \
        in shell.stderr
    checks = _checks(tmp_store, "dup")
    assert (checks["cross_split_duplicate_groups"], checks["cross_split_duplicate_images"]) == (crossing, 2 * crossing)
    listed = run_cli("sql", "--name", "duplicate_images", "--param", "dataset=dup", "--format", "json", *store)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert len(records) == IDENTICAL_GROUPS and sum(r["crosses_splits"] for r in records) == crossing
    stats = run_cli("data", "stats", "dup", *store)
    assert stats.returncode == 0 and "cross_split_duplicate_groups" in stats.stdout


def test_distinct_images_give_no_duplicate_warning(tmp_store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    rows = []
    for i in range(12):
        _png(folder / f"u{i}.png", i)
        rows.append({"path": f"u{i}.png", "uid": f"u{i}", "Cardiomegaly": str(i % 2), "Edema": "0", "No Finding": ""})
    result = ingest(tmp_store, IngestConfig(path=write_manifest(folder, rows, ["path", "uid", *LABELS]), name="ok"))
    assert not [w for w in result.warnings if "identical" in w]
    assert _checks(tmp_store, "ok")["identical_image_groups"] == 0
    assert _named(tmp_store, "duplicate_images", {"dataset": "ok"}) == []


# ---------------------------------------------------------------------------------------------
# Item 8: raw label values kept, the derived positive stored beside them
# ---------------------------------------------------------------------------------------------

#: (raw Cardiomegaly, Edema, No Finding; split) of each row, and what the row's labels must become.
LABEL_ROWS = [
    ("", "", "", "train"),        # r0: nothing known -> No Finding derived
    ("-1", "", "", "train"),      # r1: only uncertain -> No Finding derived, counted as from uncertain
    ("1", "", "", "val"),         # r2: a positive finding -> no No Finding
    ("0", "0", "1", "val"),       # r3: No Finding given
    ("1", "-1", "", "test"),      # r4: a positive and an uncertain finding
    ("", "-1", "1.0", "test"),    # r5: No Finding given although a finding is uncertain: not derived
    ("-1", "-1", "0", "train"),   # r6: No Finding 0 given, both findings uncertain -> derived anyway
]
EXPECTED_POSITIVE = {
    "r0": {"No Finding"}, "r1": {"No Finding"}, "r2": {"Cardiomegaly"}, "r3": {"No Finding"},
    "r4": {"Cardiomegaly"}, "r5": {"No Finding"}, "r6": {"No Finding"},
}


def _labels_dataset(folder: Path) -> Path:
    folder.mkdir()
    rows = []
    for i, (cardio, edema, no_finding, split) in enumerate(LABEL_ROWS):
        _png(folder / f"r{i}.png", i)
        rows.append({"path": f"r{i}.png", "uid": f"r{i}", "split": split, "Cardiomegaly": cardio, "Edema": edema,
                     "No Finding": no_finding})
    return write_manifest(folder, rows, ["path", "uid", "split", *LABELS])


def _stored_labels(store: Store) -> dict[str, dict[str, tuple[int | None, bool]]]:
    with store.reader() as con:
        rows = con.execute("SELECT s.uid, l.label, l.value, l.positive FROM labels l "
                           "JOIN samples s USING (sample_id)").fetchall()
    out: dict[str, dict[str, tuple[int | None, bool]]] = {}
    for uid, label, value, positive in rows:
        out.setdefault(uid, {})[label] = (value, positive)
    return out


def test_raw_values_are_kept_and_the_derived_positive_is_stored_beside_them(tmp_store: Store,
                                                                            tmp_path: Path) -> None:
    result = ingest(tmp_store, IngestConfig(path=_labels_dataset(tmp_path / "d"), name="lab"))
    stored = _stored_labels(tmp_store)
    raw = {"": None, "0": 0, "1": 1, "1.0": 1, "-1": -1}
    for i, values in enumerate(LABEL_ROWS):
        uid = f"r{i}"
        for label, given in zip(LABELS, values[:3], strict=True):
            value, positive = stored[uid][label]
            assert value == raw[given], (uid, label)
            assert positive == (label in EXPECTED_POSITIVE[uid]), (uid, label)
    checks = _checks(tmp_store, "lab")
    assert checks["no_finding_derived"] == 3  # r0, r1, r6
    assert checks["no_finding_from_uncertain"] == 2  # r1, r6
    assert any("2 sample(s) have No Finding only because" in w for w in result.warnings)


def test_every_query_reads_the_derived_positive(tmp_store: Store, tmp_path: Path) -> None:
    ingest(tmp_store, IngestConfig(path=_labels_dataset(tmp_path / "d"), name="lab"))
    with tmp_store.reader() as con:
        uid_of = dict(con.execute("SELECT sample_id, uid FROM samples").fetchall())
        dataset_id, split_of = con.execute("SELECT any_value(dataset_id), map(list(uid), list(split)) "
                                           "FROM samples").fetchone()
        wide = {uid_of[sid]: (nf, positives) for sid, nf, positives in
                con.execute('SELECT sample_id, "No Finding", positives FROM labels_wide').fetchall()}
    assert wide["r0"] == (None, ["No Finding"]) and wide["r6"] == (0, ["No Finding"])  # raw value, derived list
    assert all(set(p) == EXPECTED_POSITIVE[u] for u, (_, p) in wide.items())

    positives = {(uid_of[sid], label) for sid, label in _named(tmp_store, "dataset_positives",
                                                               {"dataset_id": dataset_id})}
    assert positives == {(u, label) for u, labels in EXPECTED_POSITIVE.items() for label in labels}
    per_split: dict[tuple[str, str], int] = {}
    for uid, labels in EXPECTED_POSITIVE.items():
        for label in labels:
            per_split[label, split_of[uid]] = per_split.get((label, split_of[uid]), 0) + 1
    counts = {(label, split): n for label, split, n, _ in _named(tmp_store, "label_counts", {"dataset": "lab"})}
    assert counts == {key: per_split.get(key, 0) for key in counts}
    stats = {row[0]: row[2:6] for row in _named(tmp_store, "label_stats", {"dataset": "lab"})}
    assert stats["No Finding"] == (3, 1, 1, 5)  # train r0 r1 r6, val r3, test r5
    per_image = _named(tmp_store, "labels_per_image", {"dataset": "lab"})
    assert all(row[3] == row[1] for row in per_image)  # every sample has exactly one positive
    details = {uid_of[r[0]]: r[3] for r in _named(tmp_store, "sample_details", {"ids": list(uid_of)})}
    assert {u: set(v) for u, v in details.items()} == EXPECTED_POSITIVE

    with tmp_store.writer("test") as writer, writer.transaction() as con:
        con.execute("INSERT INTO runs (run_id, mode, protocol, model_id, dataset_id, status) "
                    "VALUES ('r', 'zs', 'study', 't', ?, 'complete')", [dataset_id])
        ids = sorted(uid_of)
        append_rows(con, "scores", pa.table({
            "run_id": pa.array(["r"] * 3 * len(ids)), "sample_id": pa.array(np.repeat(ids, 3)),
            "label": pa.array(LABELS * len(ids)), "logit": pa.array(np.zeros(3 * len(ids)))}))
    truth = {(uid_of[sid], LABELS[column]) for sid, column, _, hit in
             _named(tmp_store, "run_scores", {"run_id": "r", "labels": LABELS}) if hit}
    assert truth == positives
    images = {uid_of[r[0]]: set(r[5]) for r in _named(tmp_store, "gradcam_images", {"run_id": "r"})}
    assert images == EXPECTED_POSITIVE


def test_a_store_of_schema_version_1_is_refused(tmp_store: Store) -> None:
    """Version 1 stores hold No Finding values overwritten at ingest; they are not read as version 2."""
    con = duckdb.connect(str(tmp_store.db_path))
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaVersionError, match="schema version 1;"):
        Store.open(tmp_store.path)
