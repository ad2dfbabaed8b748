"""Ingest: each format, both splits, every bad-input case, nothing half-done."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.model_selection import train_test_split

from embedstore.errors import InputError
from embedstore.ingest import IngestConfig, ingest
from embedstore.iuxray import IMAGE_DIR, STUDY_CSV
from embedstore.labels import CHEXPERT_LABELS
from embedstore.store import Store


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _table_counts(store: Store) -> tuple[int, ...]:
    with store.reader() as con:
        return tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                     for t in ("datasets", "samples", "labels", "label_names"))


def _labels(store: Store, name: str) -> dict[str, dict[str, int | None]]:
    with store.reader() as con:
        rows = con.execute(
            "SELECT s.filename, l.label, l.value FROM labels l JOIN samples s USING (sample_id) "
            "JOIN datasets d ON d.dataset_id = s.dataset_id WHERE d.name = ?", [name]).fetchall()
    out: dict[str, dict[str, int | None]] = {}
    for filename, label, value in rows:
        out.setdefault(filename, {})[label] = value
    return out


def _positives(store: Store, name: str) -> dict[str, set[str]]:
    """filename -> the derived positive labels (labels.positive)."""
    with store.reader() as con:
        rows = con.execute(
            "SELECT s.filename, l.label FROM labels l JOIN samples s USING (sample_id) "
            "JOIN datasets d ON d.dataset_id = s.dataset_id WHERE d.name = ? AND l.positive", [name]).fetchall()
    out: dict[str, set[str]] = {}
    for filename, label in rows:
        out.setdefault(filename, set()).add(label)
    return out


def test_iuxray14_ingest_keeps_values_and_applies_no_finding(tmp_store: Store, synthetic_dir: Path) -> None:
    result = ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu"))
    assert result.format == "iuxray14" and result.n_samples == 120
    assert sum(result.split_counts.values()) == 120 and min(result.split_counts.values()) > 0
    _, rows = _csv_rows(synthetic_dir / STUDY_CSV)
    stored = _labels(tmp_store, "iu")
    positives = _positives(tmp_store, "iu")
    for row in rows:
        values = stored[row["filename"]]
        for label in CHEXPERT_LABELS:
            expected = {"1.0": 1, "0.0": 0, "-1.0": -1, "": None}[row[label]]
            assert values[label] == expected
        has_positive = any(row[label] == "1.0" for label in CHEXPERT_LABELS[:-1])
        assert ("No Finding" in positives[row["filename"]]) == (not has_positive or row["No Finding"] == "1.0")
    with tmp_store.reader() as con:
        report, sha = con.execute("SELECT report, image_sha256 FROM samples ORDER BY sample_id LIMIT 1").fetchone()
    assert report.startswith(rows[0]["indication"]) and len(sha) == 64


def test_study_split_follows_sklearn_on_uids_in_first_appearance_order(tmp_store: Store, synthetic_dir: Path) -> None:
    ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu", split="study", seed=42))
    _, rows = _csv_rows(synthetic_dir / STUDY_CSV)
    uids = list(dict.fromkeys(r["uid"] for r in rows))
    train, rest = train_test_split(uids, test_size=0.30, random_state=42, shuffle=True)
    val, test = train_test_split(rest, test_size=0.50, random_state=42)
    expected = {u: "train" for u in train} | {u: "val" for u in val} | {u: "test" for u in test}
    with tmp_store.reader() as con:
        got = con.execute("SELECT uid, split FROM samples").fetchall()
    assert all(expected[uid] == split for uid, split in got)
    with tmp_store.reader() as con:
        method = con.execute("SELECT split_method, split_seed FROM datasets").fetchone()
    assert method == ("study", 42)


def test_stratified_split_keeps_common_labels_in_every_split(tmp_store: Store, synthetic_dir: Path) -> None:
    ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu", split="stratified"))
    with tmp_store.reader() as con:
        rows = con.execute(
            "SELECT l.label, count(DISTINCT s.uid) FILTER (WHERE l.value = 1) AS n, "
            "count(DISTINCT s.split) FILTER (WHERE l.value = 1) AS splits "
            "FROM labels l JOIN samples s USING (sample_id) GROUP BY l.label").fetchall()
    for label, n_uids, n_splits in rows:
        if n_uids >= 3:
            assert n_splits == 3, label


def test_kaggle_pair_with_and_without_chexpert_labels(tmp_store: Store, synthetic_dir: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    derived = ingest(tmp_store, IngestConfig(path=synthetic_dir, name="kg", format="kaggle"))
    assert derived.n_samples == 120 and any("approximate mapping" in w for w in derived.warnings)
    header, rows = _csv_rows(synthetic_dir / STUDY_CSV)
    labels_csv = tmp_path / "chexpert.csv"
    _write_rows(labels_csv, ["uid", *CHEXPERT_LABELS],
                [{k: r[k] for k in ["uid", *CHEXPERT_LABELS]} for r in {r["uid"]: r for r in rows}.values()])
    joined = ingest(tmp_store, IngestConfig(path=synthetic_dir, name="kg14", format="kaggle", labels_csv=labels_csv))
    assert len(joined.warnings) == 1 and "have No Finding only because none of their findings" in joined.warnings[0]
    ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu"))
    assert _labels(tmp_store, "kg14") == _labels(tmp_store, "iu")
    positives = lambda name: {(f, lab) for f, v in _positives(tmp_store, name).items() for lab in v}  # noqa: E731
    assert positives("kg") == positives("iu")
    laterals = ingest(tmp_store, IngestConfig(path=synthetic_dir, name="all", format="kaggle", all_projections=True))
    assert laterals.n_samples > 120


def test_manifest_csv_with_label_columns_and_given_split(tmp_store: Store, synthetic_copy: Path) -> None:
    manifest = synthetic_copy / "manifest.csv"
    _, rows = _csv_rows(synthetic_copy / STUDY_CSV)
    splits = ["train", "val", "test"]
    _write_rows(manifest, ["path", "uid", "split", "report", "Cardiomegaly", "Nodule-ish"],
                [{"path": str(IMAGE_DIR / r["filename"]), "uid": r["uid"], "split": splits[int(r["uid"]) % 3],
                  "report": r["findings"], "Cardiomegaly": r["Cardiomegaly"],
                  "Nodule-ish": "1" if int(r["uid"]) % 5 == 0 else "0"}
                 for r in rows])
    result = ingest(tmp_store, IngestConfig(path=manifest, name="m"))
    expected = {name: sum(1 for r in rows if splits[int(r["uid"]) % 3] == name) for name in splits}
    assert result.format == "manifest" and result.split_counts == expected
    with tmp_store.reader() as con:
        assert con.execute("SELECT domain FROM label_names WHERE label = 'Nodule-ish'").fetchone() == ("Other",)
        assert con.execute("SELECT split_method FROM datasets").fetchone() == ("given",)


def test_manifest_parquet_with_a_list_column(tmp_store: Store, synthetic_copy: Path) -> None:
    _, rows = _csv_rows(synthetic_copy / STUDY_CSV)
    frame = pl.DataFrame({
        "path": [str(synthetic_copy / IMAGE_DIR / r["filename"]) for r in rows],
        "labels": [[lab for lab in CHEXPERT_LABELS if r[lab] == "1.0"] for r in rows],
    })
    frame.write_parquet(synthetic_copy / "m.parquet")
    ingest(tmp_store, IngestConfig(path=synthetic_copy / "m.parquet", name="pq"))
    stored = _labels(tmp_store, "pq")
    for r in rows:
        key = str(synthetic_copy / IMAGE_DIR / r["filename"])
        assert {lab for lab, v in stored[key].items() if v == 1} >= {lab for lab in CHEXPERT_LABELS[:-1] if r[lab] == "1.0"}


def _damage(copy: Path, change) -> Path:
    header, rows = _csv_rows(copy / STUDY_CSV)
    header, rows = change(header, rows)
    _write_rows(copy / STUDY_CSV, header, rows)
    return copy


def _expect_bad(store: Store, path: Path, *fragments: str, **options: object) -> InputError:
    before = _table_counts(store)
    with pytest.raises(InputError) as caught:
        ingest(store, IngestConfig(path=path, name="bad", **options))
    text = "\n".join([*caught.value.details, str(caught.value)])
    for fragment in fragments:
        assert fragment in text, text
    assert _table_counts(store) == before
    return caught.value


def test_missing_zero_byte_truncated_and_non_image_files_are_all_listed(tmp_store: Store, synthetic_copy: Path) -> None:
    _, rows = _csv_rows(synthetic_copy / STUDY_CSV)
    images = synthetic_copy / IMAGE_DIR
    (images / rows[3]["filename"]).unlink()
    (images / rows[5]["filename"]).write_bytes(b"")
    data = (images / rows[7]["filename"]).read_bytes()
    (images / rows[7]["filename"]).write_bytes(data[: len(data) // 2])
    (images / rows[9]["filename"]).write_text("not a png")
    error = _expect_bad(tmp_store, synthetic_copy, f"{STUDY_CSV}:5: image {rows[3]['filename']} not found",
                        f"{STUDY_CSV}:7: image {rows[5]['filename']} is empty",
                        f"{STUDY_CSV}:9: image {rows[7]['filename']} is truncated",
                        f"{STUDY_CSV}:11: image {rows[9]['filename']} is truncated or not an image",
                        "4 bad row(s)", "fix them or skip them")
    assert len(error.details) == 4
    result = ingest(tmp_store, IngestConfig(path=synthetic_copy, name="ok", skip_bad=True))
    assert result.n_samples == 116 and len(result.skipped) == 4
    with tmp_store.reader() as con:
        skipped = json.loads(con.execute("SELECT skipped FROM datasets WHERE name = 'ok'").fetchone()[0])
    assert any("not found" in s for s in skipped)


def test_duplicates_and_conflicting_uids_are_listed(tmp_store: Store, synthetic_copy: Path) -> None:
    def change(header, rows):
        rows.append(dict(rows[2]))
        clash = dict(rows[4], filename=rows[4]["filename"].replace("-4001", "-4009"))
        clash["Edema"] = "1.0" if clash["Edema"] != "1.0" else "0.0"
        rows.append(clash)
        return header, rows

    _damage(synthetic_copy, change)
    _expect_bad(tmp_store, synthetic_copy, f"{STUDY_CSV}:122: duplicate filename", "(first at row 4)",
                f"{STUDY_CSV}:123: uid", "conflict with row 6")


def test_bad_label_values_are_listed_with_their_rows(tmp_store: Store, synthetic_copy: Path) -> None:
    def change(header, rows):
        rows[0]["Edema"] = "2"
        rows[10]["Fracture"] = "yes"
        return header, rows

    _damage(synthetic_copy, change)
    error = _expect_bad(tmp_store, synthetic_copy, f"{STUDY_CSV}:2: column 'Edema': value '2'",
                        f"{STUDY_CSV}:12: column 'Fracture': value 'yes'")
    assert len(error.details) == 2


@pytest.mark.parametrize("change, message", [
    (lambda h, r: ([c for c in h if c != "impression"], [{k: v for k, v in x.items() if k != "impression"} for x in r]),
     "missing column(s) impression"),
    (lambda h, r: ([*h, "Pleural Efusion"], [dict(x, **{"Pleural Efusion": ""}) for x in r]),
     "unknown column(s) Pleural Efusion"),
])
def test_missing_and_unknown_columns_are_refused(tmp_store: Store, synthetic_copy: Path, change, message: str) -> None:
    _damage(synthetic_copy, change)
    _expect_bad(tmp_store, synthetic_copy, message, STUDY_CSV)


def test_an_empty_split_is_refused(tmp_store: Store, synthetic_copy: Path) -> None:
    _damage(synthetic_copy, lambda h, r: (h, r[:2]))
    _expect_bad(tmp_store, synthetic_copy, "would be empty")


def test_reingest_needs_replace(tmp_store: Store, synthetic_dir: Path) -> None:
    first = ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu"))
    before = _table_counts(tmp_store)
    with pytest.raises(InputError, match="dataset 'iu' exists; replace it"):
        ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu"))
    assert _table_counts(tmp_store) == before
    second = ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu", replace=True, split="stratified"))
    assert second.dataset_id != first.dataset_id and _table_counts(tmp_store) == before
    with tmp_store.reader() as con:
        assert con.execute("SELECT min(sample_id) FROM samples").fetchone()[0] > 120


def test_manifest_hash_is_stable_and_tracks_content(tmp_path: Path, synthetic_dir: Path) -> None:
    a, _ = Store.init(tmp_path / "a")
    b, _ = Store.init(tmp_path / "b")
    first = ingest(a, IngestConfig(path=synthetic_dir, name="iu"))
    assert ingest(b, IngestConfig(path=synthetic_dir, name="iu")).manifest_sha256 == first.manifest_sha256
    assert ingest(b, IngestConfig(path=synthetic_dir, name="s", split="stratified")).manifest_sha256 != first.manifest_sha256


def test_ingest_and_stats_from_the_shell(tmp_store: Store, synthetic_copy: Path, run_cli) -> None:
    store = ["--store", str(tmp_store.path)]
    ok = run_cli("ingest", str(synthetic_copy), "--name", "iu", *store)
    assert ok.returncode == 0 and "ingested iu (iuxray14): 120 samples" in ok.stdout
    counts = run_cli("sql", "select split, count(*) as n from samples group by 1 order by 1", "--format", "csv", *store)
    assert counts.stdout.splitlines()[0] == "split,n" and len(counts.stdout.splitlines()) == 4
    stats = run_cli("data", "stats", "iu", *store)
    assert stats.returncode == 0 and "Cardiomegaly" in stats.stdout and "imbalance_ratio" in stats.stdout
    assert run_cli("data", "stats", "nope", *store).returncode == 2
    (synthetic_copy / IMAGE_DIR / _csv_rows(synthetic_copy / STUDY_CSV)[1][0]["filename"]).unlink()
    bad = run_cli("ingest", str(synthetic_copy), "--name", "iu2", *store)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and lines[0].startswith(f"{STUDY_CSV}:2: image")
    assert lines[-1].startswith("embedstore: error:")


def test_sample_command_writes_a_dataset(tmp_path: Path, run_cli) -> None:
    result = run_cli("data", "sample", "--out", str(tmp_path / "d"), "--n", "20", "--size", "96")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d" / IMAGE_DIR).iterdir())) >= 20
    assert np.array(_csv_rows(tmp_path / "d" / STUDY_CSV)[1]).size == 20


def test_wide_label_view_matches_long_form(tmp_store: Store, synthetic_dir: Path) -> None:
    ingest(tmp_store, IngestConfig(path=synthetic_dir, name="iu"))
    long_form = _labels(tmp_store, "iu")
    with tmp_store.reader() as con:
        wide = con.execute('SELECT s.filename, w."Cardiomegaly", w."No Finding", w.positives FROM labels_wide w '
                           "JOIN samples s USING (sample_id)").fetchall()
    derived = _positives(tmp_store, "iu")
    assert len(wide) == 120
    for filename, cardiomegaly, no_finding, positives in wide:
        assert cardiomegaly == long_form[filename]["Cardiomegaly"]
        assert no_finding == long_form[filename]["No Finding"]  # raw, not the derived No Finding
        assert positives == sorted(derived[filename])


def test_images_checked_in_worker_processes_give_the_same_dataset_and_bad_rows(
        tmp_store: Store, synthetic_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.ingest as ingest_module

    (synthetic_copy / IMAGE_DIR / sorted((synthetic_copy / IMAGE_DIR).iterdir())[3].name).write_bytes(b"not an image")
    serial = ingest(tmp_store, IngestConfig(path=synthetic_copy, name="serial", skip_bad=True))
    monkeypatch.setattr(ingest_module, "PARALLEL_IMAGE_CHECKS", 1)
    parallel = ingest(tmp_store, IngestConfig(path=synthetic_copy, name="parallel", skip_bad=True))
    assert len(serial.skipped) == 1 and parallel.skipped == serial.skipped
    assert parallel.manifest_sha256 == serial.manifest_sha256
