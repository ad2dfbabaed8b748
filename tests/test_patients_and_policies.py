"""Patient-level splits, the uncertain-label policies at ingest, `data stats` per split, and
`store upgrade` from schema version 2."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from embedstore import SCHEMA_VERSION
from embedstore.errors import SchemaVersionError
from embedstore.ingest import IngestConfig, ingest
from embedstore.stats import dataset_stats
from embedstore.store import Store
from tests.stored import write_manifest

LABELS = ("Cardiomegaly", "Edema", "No Finding")


def _write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    """Tiny distinct PNGs (one per row) and a manifest naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        pixels = np.full((16, 16), i % 256, dtype=np.uint8)
        pixels[0, 0] = i // 256
        Image.fromarray(pixels).save(folder / row["path"])
    return write_manifest(folder, rows)


def _patient_rows(n_patients: int, seed: int = 3) -> list[dict[str, str]]:
    """Patients with one to four studies each, each study one image, labels differing between studies."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(int(rng.integers(1, 5))):
            cardio = str(int(rng.random() < 0.3))
            rows.append({"path": f"p{p}_s{s}.png", "uid": f"p{p}/s{s}", "patient": f"p{p}", "Cardiomegaly": cardio,
                         "Edema": str(int(rng.random() < 0.2)), "No Finding": ""})
    return rows


def _stored(store: Store, name: str, columns: str) -> list[tuple[object, ...]]:
    with store.reader() as con:
        return con.execute(f"SELECT {columns} FROM samples s JOIN datasets d USING (dataset_id) "  # noqa: S608
                           "WHERE d.name = ? ORDER BY s.sample_id", [name]).fetchall()


@pytest.mark.parametrize("method", ["study", "stratified"])
def test_split_by_patient_keeps_each_patient_in_one_split(tmp_store: Store, tmp_path: Path, method: str) -> None:
    rows = _patient_rows(40)
    ingest(tmp_store, IngestConfig(path=_write_manifest(tmp_path / "d", rows), name="p", split=method))
    stored = _stored(tmp_store, "p", "s.patient, s.split")
    splits_of: dict[str, set[str]] = {}
    for patient, split in stored:
        splits_of.setdefault(str(patient), set()).add(str(split))
    assert len(splits_of) == 40 and all(len(found) == 1 for found in splits_of.values())
    if method == "study":  # the study's two train_test_split calls, over patients in order of first appearance
        patients = list(dict.fromkeys(r["patient"] for r in rows))
        train, rest = train_test_split(patients, test_size=0.30, random_state=42, shuffle=True)
        val, test = train_test_split(rest, test_size=0.50, random_state=42, shuffle=True)
        expected = {p: "train" for p in train} | {p: "val" for p in val} | {p: "test" for p in test}
        assert {p: next(iter(s)) for p, s in splits_of.items()} == expected


def test_without_patients_the_study_split_is_by_uid_as_before(tmp_store: Store, tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "patient"} for r in _patient_rows(30)]
    ingest(tmp_store, IngestConfig(path=_write_manifest(tmp_path / "d", rows), name="u"))
    uids = [r["uid"] for r in rows]
    train, rest = train_test_split(uids, test_size=0.30, random_state=42, shuffle=True)
    val, _ = train_test_split(rest, test_size=0.50, random_state=42, shuffle=True)
    got = {str(uid): str(split) for uid, split in _stored(tmp_store, "u", "s.uid, s.split")}
    assert got == {u: "train" if u in set(train) else "val" if u in set(val) else "test" for u in uids}
    assert {patient for (patient,) in _stored(tmp_store, "u", "s.patient")} == {None}


def test_a_given_split_that_divides_a_patient_is_kept_and_counted(tmp_store: Store, tmp_path: Path) -> None:
    rows = _patient_rows(12)
    for i, row in enumerate(rows):
        row["split"] = ("train", "val", "test")[i % 3]
    result = ingest(tmp_store, IngestConfig(path=_write_manifest(tmp_path / "d", rows), name="g"))
    by_path = {r["path"]: r["split"] for r in rows}
    assert {str(f): str(s) for f, s in _stored(tmp_store, "g", "s.filename, s.split")} == by_path
    divided = {r["patient"] for r in rows if len({x["split"] for x in rows if x["patient"] == r["patient"]}) > 1}
    assert divided and any(f"{len(divided)} patient(s) have images in more than one split" in w for w in result.warnings)
    with tmp_store.reader() as con:
        checks = json.loads(con.execute("SELECT checks FROM datasets WHERE name = 'g'").fetchone()[0])
    assert checks["patients"] == 12 and checks["patients_in_several_splits"] == len(divided)


def _policy_rows() -> list[dict[str, str]]:
    """Each combination that matters: uncertain finding alone, uncertain beside a positive, all negative."""
    values = [("1", "0"), ("-1", "0"), ("-1", "1"), ("0", "0"), ("0", "-1"), ("-1", "-1"), ("", "0")] * 3
    return [{"path": f"i{i}.png", "uid": f"u{i}", "Cardiomegaly": c, "Edema": e, "No Finding": ""}
            for i, (c, e) in enumerate(values)]


@pytest.mark.parametrize("policy", ["zeros", "ones", "ignore"])
def test_uncertain_policy_sets_the_derived_target(tmp_store: Store, tmp_path: Path, policy: str) -> None:
    rows = _policy_rows()
    ingest(tmp_store, IngestConfig(path=_write_manifest(tmp_path / "d", rows), name="u", uncertain=policy))
    with tmp_store.reader() as con:
        stored = con.execute("SELECT s.filename, l.label, l.value, l.positive FROM labels l JOIN samples s "
                             "USING (sample_id)").fetchall()
        options = json.loads(con.execute("SELECT options FROM datasets").fetchone()[0])
    assert options == {"label_set": "chexpert", "uncertain": policy}

    def expected(value: str) -> bool | None:
        if value == "-1":
            return {"zeros": False, "ones": True, "ignore": None}[policy]
        return value == "1"

    by_file = {r["path"]: r for r in rows}
    for filename, label, value, positive in stored:
        raw = by_file[filename][label]
        assert value == (int(raw) if raw else None)  # the raw value is kept as read
        if label != "No Finding":
            assert positive == expected(raw), (filename, label)
            continue
        findings = [expected(by_file[filename][name]) for name in ("Cardiomegaly", "Edema")]
        normal = False if any(findings) else None if None in findings else True
        assert positive == normal, (filename, findings)


def test_data_stats_shows_patients_and_left_out_pairs(tmp_store: Store, tmp_path: Path, run_cli) -> None:
    rows = _patient_rows(20)
    rows[0]["Edema"] = "-1"
    ingest(tmp_store, IngestConfig(path=_write_manifest(tmp_path / "d", rows), name="s", uncertain="ignore"))
    result = run_cli("data", "stats", "s", "--store", str(tmp_store.path))
    assert result.returncode == 0 and "patients" in result.stdout and "left_out" in result.stdout, result.stderr
    stats = dataset_stats(tmp_store, "s")
    per_split = {r["split"]: r for r in stats.splits.to_pylist()}
    patients = {split: {r["patient"] for r, (_, s) in zip(rows, _stored(tmp_store, "s", "s.filename, s.split"),
                                                            strict=True) if s == split} for split in per_split}
    assert {split: r["patients"] for split, r in per_split.items()} == {k: len(v) for k, v in patients.items()}
    assert sum(r["images"] for r in per_split.values()) == len(rows)
    edema = next(r for r in stats.per_label.to_pylist() if r["label"] == "Edema")
    assert edema["left_out"] == 1


def _downgrade_to_v2(store: Store) -> None:
    """Turn a fresh store into what embedstore wrote at schema version 2 (no patient, chexpert, options)."""
    con = duckdb.connect(str(store.db_path))
    try:
        con.execute("ALTER TABLE samples DROP COLUMN patient")
        con.execute("ALTER TABLE label_names DROP COLUMN chexpert")
        con.execute("ALTER TABLE datasets DROP COLUMN options")
        con.execute("ALTER TABLE labels ALTER COLUMN positive SET NOT NULL")
        con.execute("CREATE OR REPLACE VIEW labels_wide AS SELECT dataset_id, sample_id, list(label ORDER BY label) "
                    "FILTER (WHERE positive) AS positives FROM labels GROUP BY dataset_id, sample_id")  # no label_values
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    finally:
        con.close()


def test_store_upgrade_brings_a_version_2_store_to_the_current_schema(tmp_store: Store, tmp_path: Path,
                                                                      run_cli) -> None:
    ingest(tmp_store, IngestConfig(path=_write_manifest(tmp_path / "d", _patient_rows(10)), name="old"))
    before = _stored(tmp_store, "old", "s.sample_id, s.filename, s.split")
    _downgrade_to_v2(tmp_store)
    with pytest.raises(SchemaVersionError, match="store upgrade"):
        Store.open(tmp_store.path)
    result = run_cli("store", "upgrade", "--store", str(tmp_store.path))
    assert result.returncode == 0 and f"schema version 2 → {SCHEMA_VERSION}" in result.stdout, result.stderr
    opened = Store.open(tmp_store.path)
    assert _stored(opened, "old", "s.sample_id, s.filename, s.split") == before
    with opened.reader() as con:
        assert con.execute("SELECT options FROM datasets").fetchone()[0] == '{"label_set": "chexpert", "uncertain": "zeros"}'
        assert con.execute("SELECT chexpert FROM label_names WHERE label = 'Edema'").fetchone() == ("Edema",)
        assert con.execute("SELECT count(label_values) FROM labels_wide").fetchone() == (len(before),)
    again = run_cli("store", "upgrade", "--store", str(tmp_store.path))
    assert again.returncode == 0 and "already at schema version" in again.stdout


def test_an_option_the_layout_does_not_read_is_refused(tmp_store: Store, tmp_path: Path, run_cli) -> None:
    manifest = _write_manifest(tmp_path / "d", _patient_rows(5))
    result = run_cli("ingest", str(manifest), "--name", "m", "--metadata", str(manifest), "--store", str(tmp_store.path))
    assert result.returncode == 2 and result.stderr.strip() == (
        "embedstore: error: a DICOM-metadata CSV is read only by the openi format(s), not by manifest (--metadata)")
    with tmp_store.reader() as con:
        assert con.execute("SELECT count(*) FROM datasets").fetchone() == (0,)
