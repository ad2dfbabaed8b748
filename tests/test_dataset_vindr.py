"""The `vindr-cxr` layout: several readers per image made one by a policy, PhysioNet and Kaggle layouts, DICOM."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import math
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedstore.choices import SampleDomain
from embedstore.datasets import vindr
from embedstore.datasets.base import IngestConfig
from embedstore.dicom import write_dicom
from embedstore.errors import InputError
from embedstore.images import load_rgb
from embedstore.ingest import ingest
from embedstore.store import Store
from embedstore.synthetic import SampleConfig, plan_dataset, render_frontal
from tests.stored import stored_label_rows

XRV_DATA = Path(str(importlib.util.find_spec("torchxrayvision").origin)).parent / "data"
REAL_KAGGLE = XRV_DATA / "vinbigdata-train.csv.gz"
TRAIN_CSV = Path("annotations") / vindr.TRAIN_LABELS
TEST_CSV = Path("annotations") / vindr.TEST_LABELS
SAMPLE = {"n": 40, "seed": 5, "size": 64}
LABEL_SET = {entry["name"]: entry for entry in json.loads(
    resources.files("embedstore.label_sets").joinpath("vindr-cxr.json").read_text(encoding="utf-8"))["labels"]}
LABELS = list(LABEL_SET)
FINDINGS = [label for label in LABELS if label != "No finding"]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic benchmark in the PhysioNet layout (read-only: copy before changing it)."""
    out = tmp_path_factory.mktemp("vindr") / "sample"
    return vindr.write_sample(SampleConfig(out=out, workers=1, **SAMPLE))


@pytest.fixture
def sample_copy(sample_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sample_dir, tmp_path / "copy"))


def _by_policy(votes: pd.DataFrame, readers: pd.Series, policy: str) -> pd.DataFrame:
    if policy == "any":
        return votes >= 1
    if policy == "consensus":
        return votes.eq(readers, axis=0)
    return votes.mul(2).gt(readers, axis=0)


def _expected_physionet(folder: Path, policy: str) -> pd.DataFrame:
    """image_id × label by the reader policy, computed from the CSVs with pandas; No finding when no
    other label is positive."""
    train = pd.read_csv(folder / TRAIN_CSV, dtype={"image_id": str})
    test = pd.read_csv(folder / TEST_CSV, dtype={"image_id": str}).rename(columns={"Other disease": "Other diseases"})
    positive = _by_policy(train.groupby("image_id")[FINDINGS].sum(), train.groupby("image_id").size(), policy)
    out = pd.concat([positive, test.set_index("image_id")[FINDINGS] == 1]).astype(int)
    out["No finding"] = (out.sum(axis=1) == 0).astype(int)
    return out[LABELS]


def _values(stored: pd.DataFrame) -> pd.DataFrame:
    return stored.pivot(index="uid", columns="label", values="value")


def _options(store: Store, name: str) -> dict[str, object]:
    with store.reader() as con:
        return json.loads(con.execute("SELECT options FROM datasets WHERE name = ?", [name]).fetchone()[0])


def test_sample_ingests_with_majority_labels_vindr_names_and_official_split(sample_dir: Path,
                                                                            tmp_store: Store) -> None:
    result = ingest(tmp_store, IngestConfig(sample_dir, "vindr"))
    assert result.format == "vindr-cxr"
    expected = _expected_physionet(sample_dir, "majority")
    stored = stored_label_rows(tmp_store, "vindr")
    values = _values(stored)
    assert sorted(values.columns) == sorted(LABELS)
    assert (values.loc[expected.index, LABELS].astype(int).to_numpy() == expected.to_numpy()).all()

    with tmp_store.reader() as con:
        names = {row[0]: row[1:] for row in con.execute("SELECT label, domain, chexpert FROM label_names").fetchall()}
    for label, entry in LABEL_SET.items():
        assert names[label] == (entry["domain"], entry["chexpert"]), label

    samples = stored.drop_duplicates("uid").set_index("uid")
    train = pd.read_csv(sample_dir / TRAIN_CSV, dtype={"image_id": str})
    test_ids = pd.read_csv(sample_dir / TEST_CSV, dtype={"image_id": str})["image_id"]
    train_ids = sorted(set(train["image_id"]))
    assert set(samples.loc[test_ids, "split"]) == {"test"}
    val = sorted(train_ids, key=lambda i: hashlib.sha256(f"42:{i}".encode()).hexdigest())[:math.ceil(len(train_ids) / 8)]
    assert set(samples.index[samples["split"] == "val"]) == set(val)
    assert samples["patient"].isna().all()
    assert set(samples["projection"]) == {"Frontal"}

    options = _options(tmp_store, "vindr")
    assert options["readers"] == "majority" and options["label_set"] == "vindr-cxr"
    assert options["readers_per_image"] == {"1": len(test_ids), "3": len(train_ids)}
    readings = train.assign(marks=train[FINDINGS].astype(str).agg("".join, axis=1))
    differing = int((readings.groupby("image_id")["marks"].nunique() > 1).sum())
    assert differing > 0, "the sample's readers disagree now and then"
    disagreement = options["reader_disagreement"]
    assert isinstance(disagreement, dict)
    assert disagreement["images_readers_disagree"] == differing
    assert disagreement["image_disagreement_rate"] == round(differing / len(train_ids), 4)
    assert any(w.startswith(f"readers disagree on {differing} of {len(train_ids)}") for w in result.warnings)


@pytest.mark.parametrize("policy", ["any", "consensus"])
def test_reader_policy_decides_each_label(sample_dir: Path, tmp_store: Store, policy: str) -> None:
    ingest(tmp_store, IngestConfig(sample_dir, "vindr", readers=policy))
    expected = _expected_physionet(sample_dir, policy)
    values = _values(stored_label_rows(tmp_store, "vindr"))
    assert (values.loc[expected.index, LABELS].astype(int).to_numpy() == expected.to_numpy()).all()
    assert not expected.equals(_expected_physionet(sample_dir, "majority")), "the policies differ on this sample"
    assert _options(tmp_store, "vindr")["readers"] == policy


def test_monochrome1_dicom_decodes_to_the_synthetic_film(sample_dir: Path, tmp_store: Store) -> None:
    """The sample stores 12-bit MONOCHROME1 (high = dark); read back through ingest's stored path and
    the one decoder, each film is the one drawn, not its negative."""
    import pydicom

    ingest(tmp_store, IngestConfig(sample_dir, "vindr"))
    paths = stored_label_rows(tmp_store, "vindr").drop_duplicates("uid").set_index("uid")["path"]
    config = SampleConfig(out=sample_dir, workers=1, **SAMPLE)
    checked = 0
    for job in plan_dataset(config):
        image_id = np.random.default_rng([config.seed, 18, job.index]).bytes(16).hex()
        if image_id not in paths.index:
            continue
        film, _ = render_frontal(config.seed, SampleDomain.TARGET, job.index, job.study.findings, job.study.sides,
                                 config.size)
        header = pydicom.dcmread(paths[image_id])
        assert (header.PhotometricInterpretation, header.BitsAllocated, header.BitsStored) == ("MONOCHROME1", 16, 12)
        stored = header.pixel_array.astype(float)
        assert np.corrcoef(stored.ravel(), film.ravel().astype(float))[0, 1] < -0.99, "stored values are inverted"
        image, _ = load_rgb(paths[image_id])
        decoded = np.asarray(image)[..., 0].astype(int)
        assert np.abs(decoded - film.astype(int)).max() <= 1
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_gzipped_annotations_and_a_test_file_with_rad_id_read_the_same(sample_copy: Path) -> None:
    expected = _expected_physionet(sample_copy, "majority")
    test = pd.read_csv(sample_copy / TEST_CSV, dtype=str)
    test.insert(1, "rad_id", "R8")
    test.to_csv(sample_copy / TEST_CSV, index=False)
    for relative in (TRAIN_CSV, TEST_CSV):
        plain = sample_copy / relative
        with gzip.open(plain.with_name(plain.name + ".gz"), "wb") as handle:
            handle.write(plain.read_bytes())
        plain.unlink()
    loaded = vindr.load(sample_copy, IngestConfig(sample_copy, "vindr"))
    assert loaded.source.name == vindr.TRAIN_LABELS + ".gz" and not loaded.problems
    got = pd.DataFrame({row.uid: row.values for row in loaded.rows}).T
    assert (got.loc[expected.index, LABELS].astype(int).to_numpy() == expected.to_numpy()).all()
    assert {row.split for row in loaded.rows} == {"train", "val", "test"}


def _first_rows(folder: Path) -> dict[str, int]:
    """image_id → the row number (header = 1) of its first reader row in the train file."""
    train = pd.read_csv(folder / TRAIN_CSV, dtype={"image_id": str})
    return {image_id: int(index) + 2 for image_id, index in train.reset_index().groupby("image_id")["index"].min().items()}


def test_missing_dicom_is_a_bad_row_at_the_image_first_reader_row(sample_copy: Path, tmp_path: Path) -> None:
    first = _first_rows(sample_copy)
    victim = sorted(first)[3]
    (sample_copy / "train" / f"{victim}.dicom").unlink()
    store, _ = Store.init(tmp_path / "store")
    with pytest.raises(InputError) as raised:
        ingest(store, IngestConfig(sample_copy, "vindr"))
    assert len(raised.value.details) == 1
    assert raised.value.details[0].startswith(f"{vindr.TRAIN_LABELS}:{first[victim]}: image train/{victim}.dicom")
    result = ingest(store, IngestConfig(sample_copy, "vindr", skip_bad=True))
    assert result.n_samples == len(first) + len(pd.read_csv(sample_copy / TEST_CSV)) - 1


def _edit_train(folder: Path, edit: Callable[[list[list[str]]], None]) -> None:
    with open(folder / TRAIN_CSV, newline="") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with open(folder / TRAIN_CSV, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def test_bad_mark_and_repeated_reader_are_bad_rows_of_their_image(sample_copy: Path) -> None:
    first = _first_rows(sample_copy)

    def edit(rows: list[list[str]]) -> None:
        rows[2][rows[0].index("Cardiomegaly")] = "2"
        rows.append(rows[5])

    _edit_train(sample_copy, edit)
    with open(sample_copy / TRAIN_CSV, newline="") as handle:
        rows = list(csv.reader(handle))
    loaded = vindr.load(sample_copy, IngestConfig(sample_copy, "vindr"))
    assert [str(p) for p in loaded.problems] == [
        f"{vindr.TRAIN_LABELS}:{first[rows[2][0]]}: (row 3) column 'Cardiomegaly': value '2' is not 0 or 1",
        f"{vindr.TRAIN_LABELS}:{first[rows[5][0]]}: (row {len(rows)}) a second row of reader {rows[5][1]} "
        f"for image {rows[5][0]}",
    ]


def test_unknown_label_column_is_refused(sample_copy: Path) -> None:
    _edit_train(sample_copy, lambda rows: rows[0].__setitem__(rows[0].index("Edema"), "Oedema"))
    with pytest.raises(InputError, match="missing column\\(s\\) Edema; unknown column\\(s\\) Oedema"):
        vindr.load(sample_copy, IngestConfig(sample_copy, "vindr"))


def _expected_kaggle(boxes: pd.DataFrame, policy: str) -> pd.DataFrame:
    """image_id × Kaggle class by the reader policy: a reader marks a class with one box or more."""
    kaggle = [label for label in LABELS if label in vindr.KAGGLE_LABELS]
    marks = boxes.drop_duplicates(["image_id", "rad_id", "class_name"])
    votes = marks.groupby(["image_id", "class_name"]).size().unstack(fill_value=0)
    findings = [label for label in kaggle if label != "No finding"]
    votes = votes.reindex(columns=findings, fill_value=0)
    out = _by_policy(votes, boxes.groupby("image_id")["rad_id"].nunique(), policy).astype(int)
    out["No finding"] = (out.sum(axis=1) == 0).astype(int)
    return out[kaggle]


@pytest.mark.parametrize("policy", ["any", "majority", "consensus"])
def test_real_vinbigdata_boxes_aggregate_like_pandas(tmp_path: Path, policy: str) -> None:
    """All 67,914 reader boxes of the real competition file, no images needed for the labels."""
    folder = tmp_path / "vinbigdata"
    folder.mkdir()
    shutil.copy(REAL_KAGGLE, folder / "train.csv.gz")
    assert vindr.detect(folder)
    loaded = vindr.load(folder, IngestConfig(folder, "vbd", readers=policy))
    boxes = pd.read_csv(REAL_KAGGLE, dtype={"image_id": str, "rad_id": str})
    expected = _expected_kaggle(boxes, policy)
    assert len(loaded.rows) == len(expected) == 15_000 and not loaded.problems
    assert loaded.labels == list(expected.columns)
    got = np.array([[row.values[label] for label in expected.columns] for row in loaded.rows])
    assert (got == expected.loc[[row.uid for row in loaded.rows]].to_numpy()).all()
    assert loaded.options["readers_per_image"] == {"3": 15_000}
    assert {row.split for row in loaded.rows} == {None}, "the competition's labelled images are one set"


def test_real_vinbigdata_subset_ingests_with_tiny_dicoms(tmp_path: Path, tmp_store: Store) -> None:
    boxes = pd.read_csv(REAL_KAGGLE, dtype=str, keep_default_na=False)
    chosen = set(np.random.default_rng(4).choice(boxes["image_id"].unique(), size=30, replace=False))
    subset = boxes[boxes["image_id"].isin(chosen)]
    folder = tmp_path / "vinbigdata"
    (folder / "train").mkdir(parents=True)
    subset.to_csv(folder / "train.csv", index=False)
    for k, image_id in enumerate(sorted(chosen)):
        pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * (k + 1)) % 4096
        write_dicom(folder / "train" / f"{image_id}.dicom", pixels, photometric="MONOCHROME1", bits_stored=12,
                    uid_seed=image_id)
    result = ingest(tmp_store, IngestConfig(folder, "vbd"))
    assert result.format == "vindr-cxr" and result.n_samples == 30
    assert all(result.split_counts[name] > 0 for name in ("train", "val", "test"))
    expected = _expected_kaggle(subset.replace("", np.nan), "majority")
    values = _values(stored_label_rows(tmp_store, "vbd"))
    assert sorted(values.columns) == sorted(expected.columns)
    assert (values.loc[expected.index, expected.columns].astype(int).to_numpy() == expected.to_numpy()).all()


def test_unknown_kaggle_class_is_a_bad_row(tmp_path: Path) -> None:
    folder = tmp_path / "vinbigdata"
    folder.mkdir()
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max",
            "a1,No finding,14,R1,,,,", "a1,No finding,14,R2,,,,", "a1,Cardiomegaly,3,R3,1,2,3,4",
            "b2,Lung Opacity,7,R1,1,2,3,4", "b2,Lung opacity,7,R2,1,2,3,4", "b2,Lung Opacity,7,R3,1,2,3,4"]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    loaded = vindr.load(folder, IngestConfig(folder, "vbd"))
    assert [str(p) for p in loaded.problems] == [
        f"train.csv:5: (row 6) unknown class_name 'Lung opacity' (known: {', '.join(vindr.KAGGLE_LABELS)})"]
    by_uid = {row.uid: row.values for row in loaded.rows}
    assert by_uid["a1"]["No finding"] == 1 and by_uid["a1"]["Cardiomegaly"] == 0
    assert by_uid["b2"]["Lung Opacity"] == 1


def test_majority_means_more_than_half_of_that_image_readers(tmp_path: Path) -> None:
    """Half the readers is not a majority: with two or four readers the rule shows (with three it cannot)."""
    folder = tmp_path / "vinbigdata"
    folder.mkdir()
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max",
            *(f"c3,Cardiomegaly,3,R{k},1,2,3,4" for k in (1, 2)),
            *(f"c3,Pleural effusion,10,R{k},1,2,3,4" for k in (1, 2, 3)), "c3,No finding,14,R4,,,,",
            "d4,Atelectasis,1,R5,1,2,3,4", "d4,Atelectasis,1,R5,5,6,7,8", "d4,No finding,14,R6,,,,"]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    by_uid = {row.uid: row.values for row in vindr.load(folder, IngestConfig(folder, "vbd")).rows}
    assert (by_uid["c3"]["Cardiomegaly"], by_uid["c3"]["Pleural effusion"], by_uid["c3"]["No finding"]) == (0, 1, 0)
    assert (by_uid["d4"]["Atelectasis"], by_uid["d4"]["No finding"]) == (0, 1), "two boxes of one reader are one vote"
    any_reader = {row.uid: row.values for row in vindr.load(folder, IngestConfig(folder, "vbd", readers="any")).rows}
    assert (any_reader["d4"]["Atelectasis"], any_reader["d4"]["No finding"]) == (1, 0)


def test_detect_physionet_and_kaggle_folders_only(sample_dir: Path, tmp_path: Path) -> None:
    assert vindr.detect(sample_dir)
    assert not vindr.detect(sample_dir / TRAIN_CSV)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(sample_dir / TRAIN_CSV, flat / vindr.TRAIN_LABELS)
    assert vindr.detect(flat)
    other = tmp_path / "chexpert-like"
    other.mkdir()
    (other / "train.csv").write_text("Path,Sex,Cardiomegaly\nx.jpg,M,1\n")
    assert not vindr.detect(other)
