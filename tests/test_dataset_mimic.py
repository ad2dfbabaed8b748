"""The `mimic-cxr` layout: the synthetic sample end to end (read back with pandas), and hand-written
edge cases (plain or gzipped CSVs, missing images, studies without labels, images without a split,
a patient in two official splits, blank or unusual ViewPosition, reports)."""

from __future__ import annotations

import csv
import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedstore import datasets
from embedstore.choices import IngestFormat
from embedstore.datasets.base import IngestConfig
from embedstore.datasets.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV, detect, load, write_sample
from embedstore.errors import InputError
from embedstore.ingest import ingest
from embedstore.labels import CHEXPERT_LABELS
from embedstore.store import Store
from embedstore.synthetic import SampleConfig
from tests.stored import stored_samples, stored_values

SPLITS = {"train": "train", "validate": "val", "test": "test"}


def _expected(value: object) -> int | None:
    """pandas' reading of one label cell as ingest stores it: NaN -> None, 1.0/0.0/-1.0 -> int."""
    return None if isinstance(value, float) and math.isnan(value) else int(float(str(value)))


def _image_name(subject: str, study: str, dicom: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def _write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(path, format="JPEG")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


#: (dicom_id, subject_id, study_id, ViewPosition, official split) of the hand-written copy: patient
#: 10000001 has two studies (one with a lateral), every split has a frontal image.
IMAGES = [
    ("d1", "10000001", "50000001", "PA", "train"),
    ("d2", "10000001", "50000001", "LATERAL", "train"),
    ("d3", "10000001", "50000002", "AP", "train"),
    ("d4", "11000002", "50000003", "AP", "validate"),
    ("d5", "11000002", "50000003", "", "validate"),
    ("d6", "12000003", "50000004", "PA", "test"),
    ("d7", "12000003", "50000004", "LL", "test"),
    ("d8", "19000004", "50000005", "AP AXIAL", "test"),
]
#: the labels of each study, by label (unnamed labels blank)
STUDY_LABELS = {
    "50000001": {"Cardiomegaly": "1.0", "Edema": "-1.0"},
    "50000002": {"No Finding": "1.0"},
    "50000003": {"Pleural Effusion": "1.0", "Pneumothorax": "0.0"},
    "50000004": {"Support Devices": "1.0"},
    "50000005": {"Fracture": "1.0"},
}


def _tiny(root: Path, *, gz: bool = False, images: list[tuple[str, str, str, str, str]] = IMAGES,
          labels: dict[str, dict[str, str]] = STUDY_LABELS) -> Path:
    """A hand-written MIMIC-CXR-JPG copy: the three CSVs (MIMIC's column orders), an image per row,
    a report for each study but s50000004."""
    root.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    subject_of = {study: subject for _, subject, study, _, _ in images}
    _write_csv(root / f"{METADATA_CSV}{suffix}", ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"],
               [[dicom, subject, study, view, "32", "32"] for dicom, subject, study, view, _ in images])
    _write_csv(root / f"{CHEXPERT_CSV}{suffix}", ["subject_id", "study_id", *sorted(CHEXPERT_LABELS)],
               [[subject_of.get(study, "10000009"), study, *(values.get(label, "") for label in sorted(CHEXPERT_LABELS))]
                for study, values in labels.items()])
    _write_csv(root / f"{SPLIT_CSV}{suffix}", ["dicom_id", "study_id", "subject_id", "split"],
               [[dicom, study, subject, split] for dicom, subject, study, _, split in images])
    for dicom, subject, study, _, _ in images:
        _write_jpeg(root / _image_name(subject, study, dicom))
    for study in sorted(set(subject_of) - {"50000004"}):
        subject = subject_of[study]
        (root / f"files/p{subject[:2]}/p{subject}/s{study}.txt").write_text(f"  FINDINGS: study {study}.\n",
                                                                            encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic sample in MIMIC-CXR-JPG's layout (read-only)."""
    return write_sample(SampleConfig(out=tmp_path_factory.mktemp("mimic") / "sample", n=40, seed=5, size=64, workers=1))


# ---------------------------------------------------------------------------------------------
# The synthetic sample, end to end
# ---------------------------------------------------------------------------------------------

def test_mimic_sample_ingests_frontal_images_with_study_labels_reports_and_official_split(
        tmp_store: Store, sample: Path) -> None:
    metadata = pd.read_csv(sample / f"{METADATA_CSV}.gz", dtype=str, keep_default_na=False)
    labels = pd.read_csv(sample / f"{CHEXPERT_CSV}.gz", dtype={"subject_id": str, "study_id": str})
    split = pd.read_csv(sample / f"{SPLIT_CSV}.gz", dtype=str).set_index("dicom_id")["split"]
    assert list(labels.columns[2:]) == sorted(CHEXPERT_LABELS)
    frontal = metadata[metadata["ViewPosition"].isin(["PA", "AP"])]
    assert len(frontal) < len(metadata) and (metadata["ViewPosition"] == "").any()
    result = ingest(tmp_store, IngestConfig(path=sample, name="mimic"))
    assert result.format == IngestFormat.MIMIC_CXR and result.n_samples == len(frontal) and result.skipped == []
    stored = stored_samples(tmp_store).set_index("filename")
    values = stored_values(tmp_store)
    by_study = labels.set_index("study_id")
    for _, row in frontal.iterrows():
        name = _image_name(row["subject_id"], row["study_id"], row["dicom_id"])
        sample_row = stored.loc[name]
        assert (sample_row["uid"], sample_row["patient"]) == (f"s{row['study_id']}", f"p{row['subject_id']}")
        assert sample_row["split"] == SPLITS[split[row["dicom_id"]]] and sample_row["projection"] == "Frontal"
        assert Path(sample_row["path"]) == (sample / name).resolve()
        report = (sample / name).parent.with_suffix(".txt").read_text(encoding="utf-8")
        assert sample_row["report"] == report.strip() and "FINDINGS:" in report
        assert values[name] == {label: _expected(by_study.loc[row["study_id"], label]) for label in CHEXPERT_LABELS}
    with tmp_store.reader() as con:
        order = [r[0] for r in con.execute("SELECT label FROM label_names ORDER BY position").fetchall()]
    assert order == list(CHEXPERT_LABELS)
    assert stored.groupby("patient")["split"].nunique().max() == 1
    assert stored.groupby("patient")["uid"].nunique().max() > 1, "patients should have several studies"
    assert any("ViewPosition is not PA or AP were left out" in w for w in result.warnings)


def test_mimic_detected_from_its_folder_and_from_files(sample: Path, tmp_path: Path) -> None:
    assert datasets.detect(sample) == IngestFormat.MIMIC_CXR
    assert datasets.detect(sample / "files") == IngestFormat.MIMIC_CXR
    config = IngestConfig(path=sample, name="x")
    from_files = load(sample / "files", config)
    assert [r.path for r in from_files.rows] == [r.path for r in load(sample, config).rows]
    assert not detect(tmp_path) and not detect(sample / f"{METADATA_CSV}.gz")


# ---------------------------------------------------------------------------------------------
# Hand-written edge cases
# ---------------------------------------------------------------------------------------------

def test_mimic_plain_and_gzipped_csvs_read_alike(tmp_store: Store, tmp_path: Path) -> None:
    plain = load(_tiny(tmp_path / "plain"), IngestConfig(path=tmp_path / "plain", name="x"))
    zipped = load(_tiny(tmp_path / "zipped", gz=True), IngestConfig(path=tmp_path / "zipped", name="x"))
    assert plain.source.name == METADATA_CSV and zipped.source.name == f"{METADATA_CSV}.gz"
    assert [(r.row, r.filename, r.uid, r.patient, r.split, r.projection, r.values, r.report) for r in plain.rows] == [
        (r.row, r.filename, r.uid, r.patient, r.split, r.projection, r.values, r.report) for r in zipped.rows]
    assert [r.filename for r in plain.rows] == [_image_name(s, st, d) for d, s, st, v, _ in IMAGES if v in ("PA", "AP")]
    first = plain.rows[0]
    assert first.values == {label: {"Cardiomegaly": 1, "Edema": -1}.get(label) for label in CHEXPERT_LABELS}
    assert first.report == "FINDINGS: study 50000001." and first.split == "train"
    result = ingest(tmp_store, IngestConfig(path=tmp_path / "zipped", name="mimic"))
    assert result.split_counts == {"train": 2, "val": 1, "test": 1}
    assert any("1 of 4 stud(ies) have no report file" in w for w in result.warnings)


def test_mimic_view_positions_blank_and_other(tmp_path: Path) -> None:
    root = _tiny(tmp_path / "m")
    default = load(root, IngestConfig(path=root, name="x"))
    assert {r.projection for r in default.rows} == {"Frontal"}
    assert "4 image(s) whose ViewPosition is not PA or AP were left out ((blank) 1, AP AXIAL 1, LATERAL 1, LL 1)" in \
        default.warnings[0]
    every = load(root, IngestConfig(path=root, name="x", all_projections=True))
    projection = {r.filename.rsplit("/", 1)[1]: r.projection for r in every.rows}
    assert projection == {"d1.jpg": "Frontal", "d2.jpg": "Lateral", "d3.jpg": "Frontal", "d4.jpg": "Frontal",
                          "d5.jpg": None, "d6.jpg": "Frontal", "d7.jpg": "Lateral", "d8.jpg": "AP AXIAL"}


def test_mimic_missing_image_is_a_bad_row_named_by_file_and_row(tmp_store: Store, tmp_path: Path) -> None:
    root = _tiny(tmp_path / "m", gz=True)
    (root / _image_name("10000001", "50000002", "d3")).unlink()
    with pytest.raises(InputError, match="bad row") as error:
        ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    assert len(error.value.details) == 1 and error.value.details[0].startswith(f"{METADATA_CSV}.gz:4: image ")
    result = ingest(tmp_store, IngestConfig(path=root, name="mimic", skip_bad=True))
    assert result.n_samples == 3 and result.skipped[0].startswith(f"{METADATA_CSV}.gz:4:")


def test_mimic_study_without_labels_and_image_without_split_are_skippable_bad_rows(
        tmp_store: Store, tmp_path: Path) -> None:
    images = [*IMAGES, ("d9", "13000005", "50000006", "PA", "train"), ("d10", "13000005", "50000007", "PA", "train")]
    root = _tiny(tmp_path / "m", images=images, labels={**STUDY_LABELS, "50000007": {"Edema": "1.0"}})
    split_path = root / f"{SPLIT_CSV}"
    lines = split_path.read_text().splitlines()
    split_path.write_text("\n".join(line for line in lines if not line.startswith("d10,")) + "\n")
    with pytest.raises(InputError) as error:
        ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    assert error.value.details == [
        f"{METADATA_CSV}:10: study s50000006 has no row in {CHEXPERT_CSV}",
        f"{METADATA_CSV}:11: dicom_id d10 has no row in {SPLIT_CSV}",
    ]
    result = ingest(tmp_store, IngestConfig(path=root, name="mimic", skip_bad=True))
    assert result.n_samples == 4 and len(result.skipped) == 2


def test_mimic_patient_in_two_official_splits_keeps_the_given_split(tmp_store: Store, tmp_path: Path) -> None:
    images = [row if row[0] != "d3" else ("d3", "10000001", "50000002", "AP", "test") for row in IMAGES]
    root = _tiny(tmp_path / "m", images=images)
    ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    stored = stored_samples(tmp_store).set_index("uid")
    assert stored.loc["s50000001", "split"] == "train" and stored.loc["s50000002", "split"] == "test"
    assert stored.loc["s50000001", "patient"] == stored.loc["s50000002", "patient"] == "p10000001"


def test_mimic_report_that_is_not_utf8_is_a_bad_row(tmp_store: Store, tmp_path: Path) -> None:
    root = _tiny(tmp_path / "m")
    (root / "files/p10/p10000001/s50000001.txt").write_bytes(b"caf\xe9 opacity")
    with pytest.raises(InputError) as error:
        ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    assert error.value.details == [f"{METADATA_CSV}:2: report s50000001.txt is not UTF-8 text (byte 3)"]


def test_mimic_second_labels_row_for_a_study_cannot_be_skipped(tmp_store: Store, tmp_path: Path) -> None:
    root = _tiny(tmp_path / "m")
    labels_path = root / CHEXPERT_CSV
    lines = labels_path.read_text().splitlines()
    labels_path.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(InputError, match="cannot be skipped") as error:
        ingest(tmp_store, IngestConfig(path=root, name="mimic", skip_bad=True))
    assert error.value.details == [f"{CHEXPERT_CSV}:7: study_id 50000001 has a second row (first at row 2)"]


def test_mimic_label_value_error_is_reported_on_the_image_rows(tmp_store: Store, tmp_path: Path) -> None:
    root = _tiny(tmp_path / "m", labels={**STUDY_LABELS, "50000002": {"Support Devices": "yes"}})
    with pytest.raises(InputError) as error:
        ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    assert len(error.value.details) == 1
    assert error.value.details[0].startswith(f"{METADATA_CSV}:4: ({CHEXPERT_CSV}:3: column 'Support Devices': value 'yes'")
    assert error.value.details[0].endswith(") study s50000002")
    assert ingest(tmp_store, IngestConfig(path=root, name="mimic", skip_bad=True)).n_samples == 3


def test_mimic_study_labelled_under_another_subject_is_a_bad_row(tmp_store: Store, tmp_path: Path) -> None:
    root = _tiny(tmp_path / "m")
    labels_path = root / CHEXPERT_CSV
    labels_path.write_text(labels_path.read_text().replace("11000002,50000003", "11000099,50000003"))
    with pytest.raises(InputError) as error:
        ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    assert error.value.details == [
        f"{METADATA_CSV}:5: study s50000003 belongs to subject 11000099 in {CHEXPERT_CSV} (row 4), to 11000002 here"]


def test_mimic_without_split_file_splits_by_patient_and_unknown_split_is_a_bad_row(
        tmp_store: Store, tmp_path: Path) -> None:
    extra = [(f"e{k}", f"1{k}500000", f"5100000{k}", "PA", "train") for k in range(4)]
    root = _tiny(tmp_path / "m", images=[*IMAGES, *extra],
                 labels={**STUDY_LABELS, **{f"5100000{k}": {"Edema": "1.0"} for k in range(4)}})
    (root / SPLIT_CSV).unlink()
    loaded = load(root, IngestConfig(path=root, name="x"))
    assert all(r.split is None for r in loaded.rows) and loaded.options["official_split"] is False
    assert any(w.startswith(f"{SPLIT_CSV}(.gz) not found") for w in loaded.warnings)
    ingest(tmp_store, IngestConfig(path=root, name="mimic"))
    stored = stored_samples(tmp_store)
    assert len(stored) == 8 and stored.groupby("patient")["split"].nunique().max() == 1
    other = _tiny(tmp_path / "o", images=[row if row[0] != "d4" else (*row[:4], "holdout") for row in IMAGES])
    problems = [str(p) for p in load(other, IngestConfig(path=other, name="x")).problems]
    assert problems == [f"{METADATA_CSV}:5: split 'holdout' ({SPLIT_CSV} row 5) is not one of train, validate, test"]


def test_mimic_ids_that_are_not_digits_are_bad_rows(tmp_path: Path) -> None:
    images = [row if row[0] != "d3" else ("d3", "1000000x", "50000002", "AP", "train") for row in IMAGES]
    root = _tiny(tmp_path / "m", images=images)
    problems = [str(p) for p in load(root, IngestConfig(path=root, name="x")).problems]
    assert problems == [f"{METADATA_CSV}:4: subject_id '1000000x', study_id '50000002', dicom_id 'd3': each must be "
                        "given, the ids as digits"]


def test_mimic_without_unzipped_reports_looks_up_no_report_per_study(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.datasets.mimic as mimic

    root = _tiny(tmp_path / "m")
    for report in root.rglob("*.txt"):
        report.unlink()
    monkeypatch.setattr(mimic, "_read_reports", lambda *_: pytest.fail("reports looked up one by one"))
    loaded = load(root, IngestConfig(path=root, name="m"))
    assert loaded.rows and all(row.report == "" for row in loaded.rows)
    assert any(w.startswith("no report files") for w in loaded.warnings), loaded.warnings
