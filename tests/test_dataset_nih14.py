"""The `nih14` layout: NIH ChestX-ray14's label file, official lists and image folders, through ingest."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedstore.datasets import nih14, sample_writing
from embedstore.datasets.base import IngestConfig
from embedstore.errors import InputError
from embedstore.ingest import ingest
from embedstore.label_sets import label_set
from embedstore.store import Store
from embedstore.synthetic import SampleConfig
from tests.stored import stored_label_rows

#: The real v2020 label file, shipped inside torchxrayvision's wheel (found without importing torch).
XRV_DATA = Path(str(importlib.util.find_spec("torchxrayvision").origin)).parent / "data"
REAL_CSV = XRV_DATA / "Data_Entry_2017_v2020.csv.gz"
DATA_ENTRY = "Data_Entry_2017.csv"


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic benchmark in the NIH layout (read-only: copy before changing it)."""
    out = tmp_path_factory.mktemp("nih") / "sample"
    return nih14.write_sample(SampleConfig(out=out, n=48, seed=5, size=64, workers=1))


@pytest.fixture
def sample_copy(sample_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sample_dir, tmp_path / "copy"))


def _entries(folder: Path, name: str = DATA_ENTRY) -> pd.DataFrame:
    """The label file as pandas reads it (the 2017 file's trailing comma is an unnamed last column)."""
    return pd.read_csv(folder / name, usecols=["Image Index", "Finding Labels", "Patient ID"], dtype=str)


def _expected_values(entries: pd.DataFrame) -> pd.DataFrame:
    """Image Index × label, 1 where `Finding Labels` lists the label (pandas' own split)."""
    return entries.set_index("Image Index")["Finding Labels"].str.get_dummies(sep="|")


def _stored_values(stored: pd.DataFrame) -> pd.DataFrame:
    return stored.pivot(index="uid", columns="label", values="value")


def _label_set_file(name: str) -> dict[str, dict[str, object]]:
    text = resources.files("embedstore.label_sets").joinpath(f"{name}.json").read_text(encoding="utf-8")
    return {entry["name"]: entry for entry in json.loads(text)["labels"]}


def test_sample_ingests_with_nih_labels_official_split_and_patients(sample_dir: Path, tmp_store: Store) -> None:
    result = ingest(tmp_store, IngestConfig(sample_dir, "nih"))
    assert result.format == "nih14"
    entries = _entries(sample_dir)
    stored = stored_label_rows(tmp_store, "nih")
    samples = stored.drop_duplicates("uid").set_index("uid")
    assert len(samples) == len(entries) == result.n_samples

    expected = _expected_values(entries)
    values = _stored_values(stored)
    for label in values.columns:
        column = expected[label] if label in expected.columns else pd.Series(0, index=expected.index)
        assert (values.loc[expected.index, label].astype(int) == column.astype(int)).all(), label
    assert "Finding Labels" not in values.columns and len(values.columns) == 15

    with tmp_store.reader() as con:
        names = {row[0]: row[1:] for row in con.execute("SELECT label, domain, chexpert FROM label_names").fetchall()}
        options = json.loads(con.execute("SELECT options FROM datasets WHERE name = 'nih'").fetchone()[0])
    for label, entry in _label_set_file("nih14").items():
        assert names[label] == (entry["domain"], entry["chexpert"]), label
    assert options["label_set"] == "nih14"

    assert (samples.loc[entries["Image Index"], "patient"].to_numpy() == entries["Patient ID"].to_numpy()).all()
    assert (entries.groupby("Patient ID").size() > 1).any(), "the sample has follow-ups"
    assert set(samples["projection"]) == {"Frontal"}

    train_val = (sample_dir / nih14.TRAIN_VAL_LIST).read_text().split()
    test = (sample_dir / nih14.TEST_LIST).read_text().split()
    assert set(samples.loc[test, "split"]) == {"test"}
    assert set(samples.loc[train_val, "split"]) == {"train", "val"}
    patients = samples.loc[train_val].groupby("patient")["split"].nunique()
    assert (patients == 1).all(), "a patient is split between train and val"
    train_val_patients = sorted(set(samples.loc[train_val, "patient"]))
    drawn = sorted(train_val_patients, key=lambda p: hashlib.sha256(f"42:{p}".encode()).hexdigest())
    expected_val = set(drawn[:math.ceil(len(train_val_patients) / 8)])
    assert set(samples.loc[samples["split"] == "val", "patient"]) == expected_val
    assert options["val_patients"] == len(expected_val)
    assert not set(samples.loc[test, "patient"]) & set(train_val_patients)


def test_sample_maps_chexpert_findings_through_the_label_set() -> None:
    labels = label_set("nih14")
    rng = np.random.default_rng(0)
    assert sample_writing.counterparts_of(("Pleural Effusion", "Lung Opacity"), labels, rng) == ["Effusion", "Infiltration"]
    assert sample_writing.counterparts_of(("Fracture", "Support Devices"), labels, rng) == ["No Finding"]
    drawn = {tuple(sample_writing.counterparts_of(("Lung Lesion",), labels, rng)) for _ in range(40)}
    assert drawn == {("Mass",), ("Nodule",)}


def test_gzipped_label_file_and_lists_read_the_same(sample_copy: Path, tmp_path: Path) -> None:
    for name in (DATA_ENTRY, nih14.TRAIN_VAL_LIST, nih14.TEST_LIST):
        plain = sample_copy / name
        with gzip.open(plain.with_name(name + ".gz"), "wb") as handle:
            handle.write(plain.read_bytes())
        plain.unlink()
    config = IngestConfig(sample_copy, "nih")
    loaded = nih14.load(sample_copy, config)
    assert loaded.source.name == DATA_ENTRY + ".gz" and not loaded.problems
    store, _ = Store.init(tmp_path / "store")
    ingest(store, config)
    stored = stored_label_rows(store, "nih")
    expected = _expected_values(pd.read_csv(sample_copy / (DATA_ENTRY + ".gz"), dtype=str))
    values = _stored_values(stored).loc[expected.index, expected.columns].astype(int)
    assert (values.to_numpy() == expected.to_numpy()).all()
    assert set(stored["split"]) == {"train", "val", "test"}


def test_missing_image_is_a_bad_row_that_can_be_skipped(sample_copy: Path, tmp_path: Path) -> None:
    entries = _entries(sample_copy)
    victim_row = 5
    victim = entries["Image Index"][victim_row - 2]
    next(sample_copy.glob(f"images_*/images/{victim}")).unlink()
    store, _ = Store.init(tmp_path / "store")
    with pytest.raises(InputError) as raised:
        ingest(store, IngestConfig(sample_copy, "nih"))
    assert raised.value.details == [f"{DATA_ENTRY}:{victim_row}: image {victim} not found in any images*/ folder "
                                    f"of {sample_copy}"]
    result = ingest(store, IngestConfig(sample_copy, "nih", skip_bad=True))
    assert result.n_samples == len(entries) - 1
    assert result.skipped[0].startswith(f"{DATA_ENTRY}:{victim_row}: image {victim}")


def test_unknown_finding_name_is_a_bad_row(sample_copy: Path, tmp_path: Path) -> None:
    lines = (sample_copy / DATA_ENTRY).read_text().splitlines(keepends=True)
    fields = lines[3].split(",")
    fields[1] = "Cardiomegaly|Pneumonitis"
    lines[3] = ",".join(fields)
    (sample_copy / DATA_ENTRY).write_text("".join(lines))
    store, _ = Store.init(tmp_path / "store")
    with pytest.raises(InputError) as raised:
        ingest(store, IngestConfig(sample_copy, "nih"))
    assert len(raised.value.details) == 1
    assert raised.value.details[0].startswith(f"{DATA_ENTRY}:4: unknown finding(s) 'Pneumonitis' in Finding Labels")


def test_patient_in_both_official_lists_keeps_each_image_split(sample_copy: Path, tmp_path: Path) -> None:
    entries = _entries(sample_copy)
    train_val = (sample_copy / nih14.TRAIN_VAL_LIST).read_text().split()
    per_patient = entries[entries["Image Index"].isin(train_val)].groupby("Patient ID")["Image Index"].apply(list)
    moved_patient, images = next((p, names) for p, names in per_patient.items() if len(names) > 1)
    moved = images[-1]
    (sample_copy / nih14.TRAIN_VAL_LIST).write_text("".join(f"{n}\n" for n in train_val if n != moved))
    with open(sample_copy / nih14.TEST_LIST, "a") as handle:
        handle.write(f"{moved}\n")
    store, _ = Store.init(tmp_path / "store")
    result = ingest(store, IngestConfig(sample_copy, "nih"))
    assert any("1 patient(s) have images in both" in warning for warning in result.warnings)
    samples = stored_label_rows(store, "nih").drop_duplicates("uid").set_index("uid")
    assert samples.loc[moved, "split"] == "test"
    assert set(samples.loc[images[:-1], "split"]) <= {"train", "val"}
    assert set(samples.loc[images, "patient"]) == {moved_patient}


def test_image_in_neither_list_is_a_bad_row_and_one_list_alone_is_refused(sample_copy: Path) -> None:
    test = (sample_copy / nih14.TEST_LIST).read_text().split()
    (sample_copy / nih14.TEST_LIST).write_text("".join(f"{n}\n" for n in test[1:]))
    loaded = nih14.load(sample_copy, IngestConfig(sample_copy, "nih"))
    assert [p.message for p in loaded.problems] == [f"image {test[0]} is in neither {nih14.TRAIN_VAL_LIST} "
                                                    f"nor {nih14.TEST_LIST}"]
    assert not nih14.load(sample_copy, IngestConfig(sample_copy, "nih", split="study")).problems
    (sample_copy / nih14.TEST_LIST).unlink()
    with pytest.raises(InputError, match="train_val_list.txt is there but test_list.txt is not"):
        nih14.load(sample_copy, IngestConfig(sample_copy, "nih"))


def _real_subset(folder: Path, patients: int, seed: int) -> pd.DataFrame:
    """A seeded subset of the real v2020 label file's patients, written gzipped with its real header,
    and a tiny PNG at each real image name, spread over two release-style image folders."""
    lines = gzip.open(REAL_CSV, "rt").read().splitlines()
    entries = pd.read_csv(REAL_CSV, dtype=str)
    chosen = set(np.random.default_rng(seed).choice(entries["Patient ID"].unique(), size=patients, replace=False))
    keep = entries["Patient ID"].isin(chosen).to_numpy()
    folder.mkdir()
    with gzip.open(folder / REAL_CSV.name, "wt") as handle:
        handle.write("\n".join([lines[0], *(line for line, kept in zip(lines[1:], keep, strict=True) if kept)]) + "\n")
    subset = entries[keep].reset_index(drop=True)
    for i, name in enumerate(subset["Image Index"]):
        images = folder / f"images_{i % 2 + 1:03d}" / "images"
        images.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i % 256, dtype=np.uint8)).save(images / name)
    return subset


def test_real_v2020_label_file_subset_labels_equal_pandas(tmp_path: Path, tmp_store: Store) -> None:
    subset = _real_subset(tmp_path / "nih", patients=25, seed=3)
    result = ingest(tmp_store, IngestConfig(tmp_path / "nih", "real"))
    assert result.format == "nih14" and result.n_samples == len(subset)
    stored = stored_label_rows(tmp_store, "real")
    expected = _expected_values(subset)
    values = _stored_values(stored)
    assert set(expected.columns) <= set(values.columns)
    assert (values.loc[expected.index, expected.columns].astype(int).to_numpy() == expected.to_numpy()).all()
    others = [label for label in values.columns if label not in expected.columns]
    assert (values.loc[expected.index, others] == 0).all().all()
    samples = stored.drop_duplicates("uid").set_index("uid")
    assert (samples.loc[subset["Image Index"], "patient"].to_numpy() == subset["Patient ID"].to_numpy()).all()
    assert (samples.groupby("patient")["split"].nunique() == 1).all(), "without official lists, split by patient"


@pytest.mark.slow
def test_whole_real_label_file_loads_every_row(tmp_path: Path) -> None:
    """All 112,120 rows of the real v2020 file through `load` (no images: each row says so)."""
    folder = tmp_path / "nih"
    folder.mkdir()
    shutil.copy(REAL_CSV, folder / REAL_CSV.name)
    started = time.perf_counter()
    loaded = nih14.load(folder, IngestConfig(folder, "real"))
    elapsed = time.perf_counter() - started
    entries = pd.read_csv(REAL_CSV, dtype=str)
    assert len(loaded.rows) == len(entries) == 112_120
    assert {p.row for p in loaded.problems} == {row.row for row in loaded.rows}
    assert all(p.message.startswith("image ") and "not found" in p.message for p in loaded.problems)
    expected = _expected_values(entries)
    matrix = np.array([[row.values[label] for label in expected.columns] for row in loaded.rows])
    assert (matrix == expected.to_numpy()).all()
    assert [row.patient for row in loaded.rows] == entries["Patient ID"].tolist()
    assert {row.projection for row in loaded.rows} == {"Frontal"}
    print(f"nih14 load: {len(loaded.rows) / elapsed:,.0f} rows/s")


def test_detect_takes_a_folder_with_a_data_entry_file(sample_dir: Path, tmp_path: Path) -> None:
    assert nih14.detect(sample_dir)
    assert not nih14.detect(sample_dir / DATA_ENTRY), "a single file is the generic manifest's"
    assert not nih14.detect(tmp_path)


