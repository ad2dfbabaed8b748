"""The `chexpert` layout: the synthetic sample end to end, hand-written edge cases, and real CheXpert
rows (torchxrayvision's copy of train.csv) read value for value as pandas reads them."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedstore import datasets
from embedstore.choices import IngestFormat, SplitMethod
from embedstore.datasets.base import IngestConfig
from embedstore.datasets.chexpert import detect, load, write_sample
from embedstore.errors import InputError
from embedstore.ingest import ingest
from embedstore.labels import CHEXPERT_LABELS
from embedstore.store import Store
from embedstore.synthetic import SampleConfig
from tests.stored import stored_samples, stored_values

#: CheXpert's own header: No Finding first among the labels.
FILE_LABELS = ["No Finding", *[label for label in CHEXPERT_LABELS if label != "No Finding"]]
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *FILE_LABELS]
_XRV = importlib.util.find_spec("torchxrayvision")
_XRV_DIR = list(_XRV.submodule_search_locations or [""])[0] if _XRV else "/nonexistent"
REAL_CSV = Path(_XRV_DIR) / "data" / "chexpert_train.csv.gz"
SPLIT_OF_FILE = {"train.csv": "train", "valid.csv": "val", "test_labels.csv": "test"}


def _expected(value: object) -> int | None:
    """pandas' reading of one label cell as ingest stores it: NaN -> None, 1.0/0.0/-1.0 -> int."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(float(str(value)))


def _write_jpeg(path: Path, size: int = 32) -> None:
    """A small JPEG whose pixels depend on its path (so no two images are identical)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8)).save(path, format="JPEG")


def _row(path: str, view: str = "Frontal", **values: str) -> dict[str, str]:
    labels = {label: "" for label in FILE_LABELS}
    labels.update({key.replace("_", " "): value for key, value in values.items()})
    return {"Path": path, "Sex": "Female", "Age": "60", "Frontal/Lateral": view, "AP/PA": "AP" if view == "Frontal" else "",
            **labels}


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: v for k, v in row.items() if k in header} for row in rows])


def _tiny(root: Path, *, test: bool = True, gz: bool = False, header: list[str] = HEADER,
          folder_name: str = "CheXpert-v1.0-small", extra_train: int = 0) -> Path:
    """Two train patients (one with two studies and a lateral), one valid patient, one test patient
    (test_labels.csv: Path relative to its folder, no Frontal/Lateral column), and `extra_train`
    one-image train patients after them; images written where CheXpert's paths say."""
    folder = root / folder_name
    prefix = "CheXpert-v1.0-small"
    train = [
        _row(f"{prefix}/train/patient00001/study1/view1_frontal.jpg", Cardiomegaly="1.0", Edema="-1.0"),
        _row(f"{prefix}/train/patient00001/study1/view2_lateral.jpg", "Lateral", Cardiomegaly="1.0", Edema="-1.0"),
        _row(f"{prefix}/train/patient00001/study2/view1_frontal.jpg", No_Finding="1.0"),
        _row(f"{prefix}/train/patient00002/study1/view1_frontal.jpg", Pneumothorax="0.0", Fracture="1.0"),
        *(_row(f"{prefix}/train/patient{10 + k:05d}/study1/view1_frontal.jpg", Pneumonia=("1.0", "0.0")[k % 2])
          for k in range(extra_train)),
    ]
    valid = [_row(f"{prefix}/valid/patient00003/study1/view1_frontal.jpg", Atelectasis="1.0", Edema="0.0")]
    tests = [_row("test/patient00004/study1/view1_frontal.jpg", Support_Devices="1.0"),
             _row("test/patient00004/study1/view2_lateral.jpg", Support_Devices="1.0")]
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True)
    _write_csv(folder / f"train.csv{suffix}", header, train)
    _write_csv(folder / f"valid.csv{suffix}", header, valid)
    if test:
        _write_csv(folder / f"test_labels.csv{suffix}", ["Path", *FILE_LABELS], tests)
    for row in train + valid:
        _write_jpeg(folder / row["Path"].split("/", 1)[1])
    for row in tests:
        _write_jpeg(folder / row["Path"])
    return folder


def _options(store: Store) -> dict[str, object]:
    with store.reader() as con:
        row = con.execute("SELECT options FROM datasets").fetchone()
    assert row is not None
    return dict(json.loads(row[0]))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic sample in CheXpert's layout (read-only)."""
    out = tmp_path_factory.mktemp("chexpert") / "sample"
    return write_sample(SampleConfig(out=out, n=40, seed=5, size=64, workers=1))


# ---------------------------------------------------------------------------------------------
# The synthetic sample, end to end
# ---------------------------------------------------------------------------------------------

def test_chexpert_sample_ingests_frontal_images_with_study_labels_patients_and_official_split(
        tmp_store: Store, sample: Path) -> None:
    tables = {name: pd.read_csv(sample / name) for name in SPLIT_OF_FILE}
    assert list(tables["train.csv"].columns) == HEADER and list(tables["test_labels.csv"].columns) == ["Path", *FILE_LABELS]
    every = pd.concat([table.assign(file=name) for name, table in tables.items()], ignore_index=True)
    every["frontal"] = every["Path"].str.endswith("_frontal.jpg")
    assert (every.loc[every["file"] != "test_labels.csv", "Frontal/Lateral"]
            == np.where(every.loc[every["file"] != "test_labels.csv", "frontal"], "Frontal", "Lateral")).all()
    assert (~every["frontal"]).sum() > 0, "the sample should have lateral views to leave out"
    frontal = every[every["frontal"]]
    result = ingest(tmp_store, IngestConfig(path=sample, name="cx"))
    assert result.format == IngestFormat.CHEXPERT and result.n_samples == len(frontal)
    assert result.skipped == []
    stored = stored_samples(tmp_store).set_index("filename")
    values = stored_values(tmp_store)
    for _, row in frontal.iterrows():
        sample_row = stored.loc[row["Path"]]
        patient, study = re.search(r"(patient\d+)/(study\d+)/", row["Path"]).groups()  # type: ignore[union-attr]
        assert sample_row["patient"] == patient and sample_row["uid"] == f"{patient}/{study}"
        assert sample_row["split"] == SPLIT_OF_FILE[row["file"]] and sample_row["projection"] == "Frontal"
        assert sample_row["report"] == ""
        relative = row["Path"] if row["file"] == "test_labels.csv" else row["Path"].split("/", 1)[1]
        assert Path(sample_row["path"]) == (sample / relative).resolve() and Path(sample_row["path"]).is_file()
        assert values[row["Path"]] == {label: _expected(row[label]) for label in CHEXPERT_LABELS}
    with tmp_store.reader() as con:
        order = [r[0] for r in con.execute("SELECT label FROM label_names ORDER BY position").fetchall()]
        method = con.execute("SELECT split_method FROM datasets").fetchone()
    assert order == list(CHEXPERT_LABELS) and method == ("given",)
    assert stored.groupby("patient")["split"].nunique().max() == 1
    assert stored.groupby("patient")["uid"].nunique().max() > 1, "patients should have several studies"
    assert _options(tmp_store)["official_split"] is True


def test_chexpert_detected_from_its_folder_and_from_the_parent(sample: Path, tmp_path: Path) -> None:
    assert datasets.detect(sample) == IngestFormat.CHEXPERT
    assert datasets.detect(sample.parent) == IngestFormat.CHEXPERT
    config = IngestConfig(path=sample.parent, name="x")
    assert [r.filename for r in load(sample.parent, config).rows] == [r.filename for r in load(sample, config).rows]
    two = tmp_path / "two"
    _tiny(two, folder_name="CheXpert-v1.0-small")
    _tiny(two, folder_name="CheXpert-v1.0")
    assert not detect(two)
    with pytest.raises(InputError, match="exactly one CheXpert"):
        load(two, IngestConfig(path=two, name="x"))
    other = tmp_path / "other"
    other.mkdir()
    _write_csv(other / "train.csv", ["path", "Cardiomegaly"], [{"path": "a.png", "Cardiomegaly": "1"}])
    assert not detect(other) and not detect(other / "train.csv")


# ---------------------------------------------------------------------------------------------
# Hand-written edge cases
# ---------------------------------------------------------------------------------------------

def test_chexpert_test_labels_paths_and_views_read_from_the_file_name(tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    rows = load(folder, IngestConfig(path=folder, name="x", all_projections=True)).rows
    test_rows = {r.filename: r for r in rows if r.split == "test"}
    assert set(test_rows) == {"test/patient00004/study1/view1_frontal.jpg", "test/patient00004/study1/view2_lateral.jpg"}
    assert [test_rows[f].projection for f in sorted(test_rows)] == ["Frontal", "Lateral"]
    assert all(r.path == folder / r.filename for r in test_rows.values())
    frontal_only = load(folder, IngestConfig(path=folder, name="x")).rows
    assert sorted(r.filename for r in rows if r.projection == "Frontal") == sorted(r.filename for r in frontal_only)


def test_chexpert_without_test_labels_splits_by_patient_and_warns(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path, test=False, extra_train=6)
    loaded = load(folder, IngestConfig(path=folder, name="x"))
    assert all(r.split is None for r in loaded.rows)
    assert any("test_labels.csv not found" in w and "valid.csv's images are folded" in w for w in loaded.warnings)
    assert loaded.options["official_split"] is False
    result = ingest(tmp_store, IngestConfig(path=folder, name="cx"))
    stored = stored_samples(tmp_store)
    assert result.n_samples == 10 and set(stored["filename"]) == {r.filename for r in loaded.rows}
    assert stored.groupby("patient")["split"].nunique().max() == 1
    with tmp_store.reader() as con:
        assert con.execute("SELECT split_method FROM datasets").fetchone() == ("study",)
    with pytest.raises(InputError, match="no split column"):
        ingest(tmp_store, IngestConfig(path=folder, name="cx2", split=SplitMethod.GIVEN))


def test_chexpert_gzipped_csvs_are_read(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path, gz=True)
    assert datasets.detect(folder) == IngestFormat.CHEXPERT
    result = ingest(tmp_store, IngestConfig(path=folder, name="cx"))
    assert result.n_samples == 5 and result.split_counts == {"train": 3, "val": 1, "test": 1}
    assert stored_values(tmp_store)["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]["Edema"] == -1


def test_chexpert_paths_resolve_in_a_renamed_dataset_folder(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path, folder_name="my-chexpert")
    assert datasets.detect(folder) == IngestFormat.CHEXPERT
    assert ingest(tmp_store, IngestConfig(path=folder, name="cx")).n_samples == 5


def test_chexpert_missing_image_is_a_bad_row_named_by_file_and_row(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    (folder / "train/patient00001/study2/view1_frontal.jpg").unlink()
    with pytest.raises(InputError, match="bad row") as error:
        ingest(tmp_store, IngestConfig(path=folder, name="cx"))
    assert len(error.value.details) == 1 and error.value.details[0].startswith("train.csv:4: image ")
    result = ingest(tmp_store, IngestConfig(path=folder, name="cx", skip_bad=True))
    assert result.n_samples == 4 and result.skipped[0].startswith("train.csv:4:")


def test_chexpert_unknown_column_is_tolerated_with_a_warning(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path, header=[*HEADER, "Lung Nodule Size"])
    result = ingest(tmp_store, IngestConfig(path=folder, name="cx"))
    assert result.n_samples == 5
    assert [w for w in result.warnings if "Lung Nodule Size" in w] == [
        "train.csv: column(s) Lung Nodule Size are not CheXpert's and were ignored (a newer release?)",
        "valid.csv: column(s) Lung Nodule Size are not CheXpert's and were ignored (a newer release?)"]
    missing = tmp_path / "missing"
    _tiny(missing, header=[c for c in HEADER if c != "Fracture"])
    with pytest.raises(InputError, match="missing column.*Fracture"):
        load(missing, IngestConfig(path=missing, name="x"))


def test_chexpert_views_of_one_study_with_different_labels_conflict(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    path = folder / "train.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    rows.append(_row("CheXpert-v1.0-small/train/patient00002/study1/view2_frontal.jpg", Fracture="0.0"))
    _write_csv(path, HEADER, rows)
    _write_jpeg(folder / "train/patient00002/study1/view2_frontal.jpg")
    with pytest.raises(InputError) as error:
        ingest(tmp_store, IngestConfig(path=folder, name="cx"))
    assert error.value.details == ["train.csv:6: uid patient00002/study1 has labels that conflict with row 5"]


def test_chexpert_bad_path_and_bad_value_are_bad_rows(tmp_store: Store, tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    path = folder / "train.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    rows[0]["Cardiomegaly"] = "yes"
    rows.append(_row("CheXpert-v1.0-small/train/loose.jpg"))
    _write_csv(path, HEADER, rows)
    _write_jpeg(folder / "train/loose.jpg")
    with pytest.raises(InputError) as error:
        ingest(tmp_store, IngestConfig(path=folder, name="cx"))
    details = error.value.details
    assert any(d.startswith("train.csv:2: column 'Cardiomegaly': value 'yes'") for d in details)
    assert any(d.startswith("train.csv:6: Path 'CheXpert-v1.0-small/train/loose.jpg' does not end in") for d in details)
    assert ingest(tmp_store, IngestConfig(path=folder, name="cx", skip_bad=True)).n_samples == 4


def test_chexpert_load_reads_no_image_file(tmp_path: Path) -> None:
    """Ingest checks every image; the loader only names them (so it stays fast on 224k rows)."""
    folder = _tiny(tmp_path)
    for image in list(folder.rglob("*.jpg")):
        image.unlink()
    loaded = load(folder, IngestConfig(path=folder, name="x"))
    assert len(loaded.rows) == 5 and loaded.problems == []


# ---------------------------------------------------------------------------------------------
# Real CheXpert rows
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not REAL_CSV.is_file(), reason="torchxrayvision's chexpert_train.csv.gz is not installed")
def test_chexpert_real_rows_read_as_pandas_reads_them(tmp_store: Store, tmp_path: Path) -> None:
    """A seeded subset of real train.csv rows (whole patients), some moved to valid.csv, tiny JPEGs at
    their real paths: every label value equals pandas' reading of the same cell."""
    with gzip.open(REAL_CSV, "rt", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        by_patient: dict[str, list[list[str]]] = {}
        for record in reader:
            by_patient.setdefault(record[0].split("/")[2], []).append(record)
    assert header == HEADER
    patients = sorted(by_patient)
    chosen: list[str] = []
    for index in np.random.default_rng(14).permutation(len(patients)):
        chosen.append(patients[index])
        if sum(len(by_patient[p]) for p in chosen) >= 300:
            break
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    n_valid = max(1, len(chosen) // 8)
    files = {"train.csv": chosen[n_valid:], "valid.csv": chosen[:n_valid]}
    for name, patients in files.items():
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            for patient in patients:
                for record in by_patient[patient]:
                    if name == "valid.csv":
                        record = [record[0].replace("/train/", "/valid/"), *record[1:]]
                    writer.writerow(record)
                    _write_jpeg(folder / record[0].split("/", 1)[1], size=16)
    frame = pd.concat([pd.read_csv(folder / name).assign(file=name) for name in files], ignore_index=True)
    loaded = load(tmp_path, IngestConfig(path=tmp_path, name="x", all_projections=True))
    assert loaded.problems == [] and len(loaded.rows) == len(frame)
    for row, (_, expected) in zip(loaded.rows, frame.iterrows(), strict=True):
        assert row.filename == expected["Path"] and row.file == expected["file"]
        assert row.projection == expected["Frontal/Lateral"]
        parts = expected["Path"].split("/")
        assert (row.patient, row.uid) == (parts[2], f"{parts[2]}/{parts[3]}")
        assert row.values == {label: _expected(expected[label]) for label in CHEXPERT_LABELS}
    result = ingest(tmp_store, IngestConfig(path=tmp_path, name="real"))
    assert result.n_samples == (frame["Frontal/Lateral"] == "Frontal").sum() and result.skipped == []
    stored = stored_samples(tmp_store)
    assert stored.groupby("patient")["split"].nunique().max() == 1
