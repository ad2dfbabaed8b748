"""The `openi` layout: NLM's IU-Xray reports (`ecgen-radiology/*.xml` or `NLMCXR_reports.tgz`) with PNGs.

The real archive and DICOM-metadata CSV shipped by torchxrayvision are read whole and checked against
an independent parse written out here; hostile and odd inputs are tiny hand-written XMLs.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
import torchxrayvision
from PIL import Image

from embedstore import datasets
from embedstore.choices import IngestFormat
from embedstore.datasets import openi
from embedstore.datasets.base import IngestConfig
from embedstore.datasets.iuxray import PROBLEM_TO_LABEL
from embedstore.errors import InputError
from embedstore.ingest import ingest
from embedstore.labels import CHEXPERT_LABELS
from embedstore.store import Store

TXV_DATA = Path(torchxrayvision.__file__).parent / "data"
REAL_ARCHIVE = TXV_DATA / "NLMCXR_reports.tgz"
REAL_METADATA = TXV_DATA / "nlmcxr_dicom_metadata.csv.gz"


def _png(index: int) -> bytes:
    """A 32x32 grey PNG whose first two pixels encode `index` (distinct bytes per image)."""
    pixels = np.full((32, 32), 128, np.uint8)
    pixels.flat[:3] = (index >> 16, (index >> 8) & 255, index & 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The real archive, read whole
# ---------------------------------------------------------------------------------------------

@dataclass
class Expected:
    """One report as the test reads it."""

    uid: str
    report: str
    values: dict[str, int | None]
    images: list[str]


def _independent_parse(archive: Path) -> list[Expected]:
    """Every report of the archive by ElementTree: uid, report text, MeSH-derived values, image ids."""
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            root = ElementTree.fromstring(tar.extractfile(member).read())  # type: ignore[union-attr]
            sections = {e.get("Label"): (e.text or "").strip() for e in root.findall(".//AbstractText")}
            values: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS, 0)
            for node in root.findall("MeSH/major") + root.findall("MeSH/minor"):
                key = (node.text or "").split("/")[0].strip().lower()
                if key in PROBLEM_TO_LABEL:
                    values[PROBLEM_TO_LABEL[key]] = 1
            order = ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")
            reports.append(Expected(
                uid=root.findall("uId")[0].get("id", ""),
                report=" ".join(text for text in (sections.get(k) for k in order) if text),
                values=values,
                images=[e.get("id", "") for e in root.findall("parentImage")],
            ))
    return reports


@pytest.fixture(scope="module")
def real_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real reports archive beside a PNG (distinct tiny bytes) at every parentImage name, nested
    one folder down as the NLMCXR_png archive unpacks."""
    folder = tmp_path_factory.mktemp("openi")
    shutil.copy(REAL_ARCHIVE, folder / openi.REPORTS_ARCHIVE)
    images = folder / "unpacked" / "NLMCXR_png"
    images.mkdir(parents=True)
    ids = [image for report in _independent_parse(REAL_ARCHIVE) for image in report.images]
    for index, image_id in enumerate(ids):
        (images / f"{image_id}.png").write_bytes(_png(index))
    return folder


@pytest.fixture(scope="module")
def real_reports() -> list[Expected]:
    return _independent_parse(REAL_ARCHIVE)


def test_real_archive_rows_equal_an_independent_parse(real_copy: Path, real_reports: list[Expected]) -> None:
    loaded = openi.load(real_copy / openi.REPORTS_ARCHIVE, IngestConfig(path=real_copy, name="openi"))
    assert loaded.problems == [] and loaded.format == "openi"
    expected = {f"{image}.png": report for report in real_reports for image in report.images}
    assert len(loaded.rows) == len(expected) == sum(len(r.images) for r in real_reports)
    assert {r.filename for r in loaded.rows} == set(expected)
    assert {r.uid for r in loaded.rows} == {r.uid for r in real_reports if r.images}
    for row in loaded.rows:
        report = expected[row.filename]
        assert (row.uid, row.report, row.values) == (report.uid, report.report, report.values), row.filename
        assert row.path == real_copy / "unpacked" / "NLMCXR_png" / row.filename and row.path.is_file()
        assert row.projection is None and row.patient is None and row.split is None
    without_images = [r.uid for r in real_reports if not r.images]
    assert without_images and any(w.startswith(f"{len(without_images)} report(s) have no parentImage")
                                  for w in loaded.warnings)
    unmapped: Counter[str] = Counter()
    for member_terms in _real_mesh_terms():
        unmapped.update(t for t in member_terms if t not in PROBLEM_TO_LABEL)
    assert any(w.startswith(f"{len(unmapped)} MeSH term(s) ({sum(unmapped.values())} uses) map to no CheXpert label")
               for w in loaded.warnings)
    assert any("approximate mapping" in w for w in loaded.warnings)
    assert any("no DICOM-metadata CSV" in w for w in loaded.warnings)
    assert str(loaded.options["label_source"]).startswith("MeSH") and "no metadata" in str(loaded.options["view_rule"])


def _real_mesh_terms() -> list[list[str]]:
    with tarfile.open(REAL_ARCHIVE) as tar:
        roots = [ElementTree.fromstring(tar.extractfile(m).read())  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()]
    return [[(n.text or "").split("/")[0].strip().lower() for n in root.findall("MeSH/major")] for root in roots]


def test_real_metadata_gives_the_frontal_images(real_copy: Path, real_reports: list[Expected]) -> None:
    metadata = pd.read_csv(REAL_METADATA, usecols=["imageid", "View Position"], dtype=str, keep_default_na=False)
    view_of = dict(zip(metadata["imageid"], metadata["View Position"].str.strip().str.upper(), strict=True))
    ids = [image for report in real_reports for image in report.images]
    frontal = [i for i in ids if view_of.get(i) in ("PA", "AP")]
    lateral = [i for i in ids if view_of.get(i) in ("LL", "RL", "LATERAL", "LARGE LATERAL")]
    unknown = len(ids) - len(frontal) - len(lateral)
    config = IngestConfig(path=real_copy, name="openi", metadata_csv=REAL_METADATA)
    loaded = openi.load(real_copy, config)
    got = Counter(row.projection for row in loaded.rows)
    assert got == {"Frontal": len(frontal), None: unknown} and 0 < unknown < len(frontal)
    assert {r.filename for r in loaded.rows if r.projection == "Frontal"} == {f"{i}.png" for i in frontal}
    assert any(w.startswith(f"{unknown} image(s) of unknown view kept") for w in loaded.warnings)
    assert any(w.startswith(f"{len(lateral)} lateral image(s) left out") for w in loaded.warnings)
    assert "nlmcxr_dicom_metadata.csv.gz" in str(loaded.options["view_rule"])
    every = openi.load(real_copy, IngestConfig(path=real_copy, name="openi", metadata_csv=REAL_METADATA,
                                               all_projections=True))
    assert Counter(row.projection for row in every.rows)["Lateral"] == len(lateral) and len(every.rows) == len(ids)


@pytest.mark.slow
def test_real_archive_ingests_whole(real_copy: Path, real_reports: list[Expected], tmp_store: Store) -> None:
    assert datasets.detect(real_copy) == IngestFormat.OPENI
    started = time.perf_counter()
    result = ingest(tmp_store, IngestConfig(path=real_copy, name="openi"))
    seconds = time.perf_counter() - started
    n_images = sum(len(r.images) for r in real_reports)
    print(f"\nopeni ingest: {result.n_samples} rows in {seconds:.1f} s, {result.n_samples / seconds:.0f} rows/s")
    assert result.format == "openi" and result.n_samples == n_images and result.skipped == []
    with tmp_store.reader() as con:
        counts = con.execute("SELECT count(DISTINCT uid), count(*), count(patient) FROM samples").fetchall()
        options = json.loads(con.execute("SELECT options FROM datasets").fetchall()[0][0])
        cardiomegaly = con.execute("SELECT count(*) FROM labels WHERE label = 'Cardiomegaly' AND value = 1").fetchall()
    assert counts == [(len([r for r in real_reports if r.images]), n_images, 0)]
    assert cardiomegaly == [(sum(len(r.images) for r in real_reports if r.values["Cardiomegaly"] == 1),)]
    assert options["reports"] == openi.REPORTS_ARCHIVE and "MeSH" in options["label_source"]


# ---------------------------------------------------------------------------------------------
# Hand-written reports
# ---------------------------------------------------------------------------------------------

def _xml(uid: str, images: list[str], major: tuple[str, ...] | list[str] = (), minor: tuple[str, ...] | list[str] = (),
         automatic: tuple[str, ...] | list[str] = (), findings: str = "Heart normal.") -> str:
    """A report shaped as OpenI's: uId, the four AbstractTexts, MeSH terms, one parentImage per line."""
    mesh = "".join(f"<major>{t}</major>" for t in major) + "".join(f"<minor>{t}</minor>" for t in minor)
    mesh += "".join(f"<automatic>{t}</automatic>" for t in automatic)
    parents = "".join(f'\n  <parentImage id="{i}"><caption>Xray</caption></parentImage>' for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation>\n  <uId id="{uid}"/>\n  <MedlineCitation><Article>'
            f'<Abstract><AbstractText Label="COMPARISON">None.</AbstractText>'
            f'<AbstractText Label="INDICATION">Cough</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract></Article>'
            f'</MedlineCitation>\n  <MeSH>{mesh}</MeSH>{parents}\n</eCitation>\n')


def _folder(tmp_path: Path, reports: dict[str, str], images: list[str]) -> Path:
    """`tmp_path/ds` with `ecgen-radiology/<name>` and a PNG per image id in `NLMCXR_png/`."""
    root = tmp_path / "ds"
    (root / openi.REPORTS_DIR).mkdir(parents=True)
    (root / openi.IMAGES_DIR).mkdir()
    for name, body in reports.items():
        (root / openi.REPORTS_DIR / name).write_text(body, encoding="utf-8")
    for index, image_id in enumerate(images):
        (root / openi.IMAGES_DIR / f"{image_id}.png").write_bytes(_png(index))
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    """One member of any kind, written as given (tarfile.add would refuse or rewrite the odd ones)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_folder_and_archive_give_the_same_rows(tmp_path: Path) -> None:
    reports = {"1.xml": _xml("CXR1", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"], ["normal"]),
               "10.xml": _xml("CXR10", ["CXR10_IM-0002-1001"], ["Cardiomegaly/mild", "Opacity/lung/base/left"]),
               "2.xml": _xml("CXR2", ["CXR2_IM-0652-1001"], ["Pleural Effusion/right"])}
    root = _folder(tmp_path, reports, ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR10_IM-0002-1001",
                                       "CXR2_IM-0652-1001"])
    from_folder = openi.load(root, IngestConfig(path=root, name="o"))
    archive = tmp_path / "packed" / openi.REPORTS_ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "ecgen-radiology/", kind=tarfile.DIRTYPE)
        for name, body in reports.items():
            _add(tar, f"ecgen-radiology/{name}", body.encode())
    shutil.copytree(root / openi.IMAGES_DIR, archive.parent / openi.IMAGES_DIR)
    from_archive = openi.load(archive, IngestConfig(path=archive, name="o"))
    strip = [(r.file, r.row, r.uid, r.filename, r.report, r.values) for r in from_folder.rows]
    assert strip == [(r.file, r.row, r.uid, r.filename, r.report, r.values) for r in from_archive.rows]
    assert [r.uid for r in from_folder.rows] == ["CXR1", "CXR1", "CXR2", "CXR10"]  # 2.xml before 10.xml
    first = from_folder.rows[0]
    assert first.file == "ecgen-radiology/1.xml" and first.row == 6  # the line of its parentImage
    assert first.report == "Cough None. Heart normal. No acute disease."
    assert first.values["No Finding"] == 1 and sum(v == 1 for v in first.values.values()) == 1
    cxr10 = from_folder.rows[3].values
    assert {k for k, v in cxr10.items() if v == 1} == {"Cardiomegaly", "Lung Opacity"}
    assert all(r.path.is_file() for r in from_folder.rows + from_archive.rows)
    assert openi.detect(root) and openi.detect(root / openi.REPORTS_DIR) and openi.detect(archive)
    assert openi.detect(archive.parent) and not openi.detect(tmp_path) and not openi.detect(tmp_path / "x.csv")


def test_unmapped_minor_and_automatic_mesh_terms(tmp_path: Path) -> None:
    reports = {"1.xml": _xml("CXR1", ["A1"], major=["Calcinosis/lung"], minor=["Nodule"], automatic=["edema"]),
               "2.xml": _xml("CXR2", ["B1"], major=["Calcinosis/aorta", "Lung/hypoinflation"])}
    loaded = openi.load(_folder(tmp_path, reports, ["A1", "B1"]), IngestConfig(path=tmp_path, name="o"))
    one, two = loaded.rows
    assert {k for k, v in one.values.items() if v == 1} == {"Lung Lesion"}  # minor counts, automatic does not
    assert set(two.values.values()) == {0}
    assert any(w.startswith("2 MeSH term(s) (3 uses) map to no CheXpert label, e.g. calcinosis, lung")
               for w in loaded.warnings)


def test_malformed_and_entity_declaring_reports_are_refused_by_name(tmp_path: Path) -> None:
    laughs = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
              '<eCitation><uId id="CXR3"/><parentImage id="C1"/><MeSH><major>&lol2;</major></MeSH></eCitation>')
    external = ('<?xml version="1.0"?>\n<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
                '<eCitation><uId id="CXR4"/><MeSH><major>&x;</major></MeSH></eCitation>')
    reports = {"1.xml": _xml("CXR1", ["A1"]), "2.xml": "<eCitation><uId id='CXR2'/><MeSH>\n</eCitation>",
               "3.xml": laughs, "4.xml": external, "5.xml": _xml("", ["E1"]), "6.xml": "<eCitation>&lol;</eCitation>"}
    root = _folder(tmp_path, reports, ["A1", "C1", "E1"])
    loaded = openi.load(root, IngestConfig(path=root, name="o"))
    assert [r.uid for r in loaded.rows] == ["CXR1"]
    messages = {p.file: str(p) for p in loaded.problems}
    assert set(messages) == {f"ecgen-radiology/{n}.xml" for n in (2, 3, 4, 5, 6)}
    assert messages["ecgen-radiology/2.xml"].startswith("ecgen-radiology/2.xml:2: not well-formed XML (mismatched tag)")
    assert "DOCTYPE declaration (lolz)" in messages["ecgen-radiology/3.xml"]
    assert messages["ecgen-radiology/3.xml"].endswith("which no OpenI report has; refused")
    assert "DOCTYPE declaration (e)" in messages["ecgen-radiology/4.xml"]
    assert "no <uId" in messages["ecgen-radiology/5.xml"]
    assert "undefined entity" in messages["ecgen-radiology/6.xml"]
    store, _ = Store.init(tmp_path / "store")
    with pytest.raises(InputError, match="cannot be skipped") as refused:
        ingest(store, IngestConfig(path=root, name="o", skip_bad=True))
    assert any("3.xml" in line for line in refused.value.details)


def test_archive_links_escapes_and_oversized_members_are_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "data" / "NLMCXR_reports_v2.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "ecgen-radiology/1.xml", _xml("CXR1", ["A1"]).encode())
        _add(tar, "ecgen-radiology/link.xml", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, "ecgen-radiology/hard.xml", kind=tarfile.LNKTYPE, link="ecgen-radiology/1.xml")
        _add(tar, "../escape.xml", _xml("CXR9", ["Z1"]).encode())
        _add(tar, "/abs.xml", _xml("CXR8", ["Y1"]).encode())
        _add(tar, "ecgen-radiology/big.xml", _xml("CXR7", ["X1"], findings="x" * 400).encode())
        _add(tar, "ecgen-radiology/._1.xml", b"\x00\x05\x16\x07 AppleDouble")
        _add(tar, "README.txt", b"reports")
    monkeypatch.setattr(openi, "MAX_REPORT_BYTES", 600)
    assert openi.detect(archive)
    loaded = openi.load(archive, IngestConfig(path=archive, name="o"))
    assert [r.uid for r in loaded.rows] == ["CXR1"]
    text = "\n".join(str(p) for p in loaded.problems)
    assert "member ecgen-radiology/link.xml is not a regular file" in text
    assert "member ecgen-radiology/hard.xml is not a regular file" in text
    assert "member '../escape.xml' is not a plain relative path" in text
    assert "member '/abs.xml' is not a plain relative path" in text
    assert "ecgen-radiology/big.xml: " in text and "limit of a report; refused" in text
    assert len(loaded.problems) == 5
    assert any(w.startswith("2 file(s) in NLMCXR_reports_v2.tar.gz not named *.xml (or hidden) ignored")
               for w in loaded.warnings)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["NLMCXR_reports_v2.tar.gz", "data"]  # nothing extracted


def test_labels_csv_by_uid_or_bare_number(tmp_path: Path) -> None:
    reports = {"1.xml": _xml("CXR1", ["A1", "A2"], ["normal"]), "2.xml": _xml("CXR2", ["B1"], ["Cardiomegaly"]),
               "3.xml": _xml("CXR3", ["C1"])}
    root = _folder(tmp_path, reports, ["A1", "A2", "B1", "C1"])
    labels = tmp_path / "chexpert.csv"
    header = ["uid", *CHEXPERT_LABELS]
    rows = [["CXR1", *["" for _ in CHEXPERT_LABELS[:-1]], "1.0"],
            ["2", "-1.0", "0.0", *["" for _ in CHEXPERT_LABELS[2:]]]]
    labels.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    loaded = openi.load(root, IngestConfig(path=root, name="o", labels_csv=labels))
    by_file = {r.filename: r for r in loaded.rows}
    assert by_file["A1.png"].values == by_file["A2.png"].values == {**dict.fromkeys(CHEXPERT_LABELS), "No Finding": 1}
    assert by_file["B1.png"].values["Enlarged Cardiomediastinum"] == -1
    assert by_file["B1.png"].values["Cardiomegaly"] == 0  # the CSV, not the MeSH term
    assert [str(p) for p in loaded.problems] == [f"ecgen-radiology/3.xml:{by_file['C1.png'].row}: uid CXR3 has no row "
                                                 "in chexpert.csv"]
    assert not any("approximate" in w for w in loaded.warnings)
    assert loaded.options["label_source"] == "labels CSV chexpert.csv by uid"
    store, _ = Store.init(tmp_path / "store")
    with pytest.raises(InputError, match="1 bad row"):
        ingest(store, IngestConfig(path=root, name="o", labels_csv=labels))


def test_metadata_views_missing_images_and_odd_image_ids(tmp_path: Path) -> None:
    reports = {"1.xml": _xml("CXR1", ["F1", "L1", "U1", "N1"], ["normal"]),
               "2.xml": _xml("CXR2", ["../../etc/passwd", "M1"]), "3.xml": _xml("CXR1", ["D1"])}
    root = _folder(tmp_path, reports, ["F1", "L1", "U1", "N1", "D1"])
    (root / openi.IMAGES_DIR / "N1.png").rename(root / "N1.png")  # outside NLMCXR_png/: not searched
    metadata = tmp_path / "meta.csv.gz"
    with gzip.open(metadata, "wt") as handle:
        handle.write("imageid,Modality,,View Position\nF1,CR,,pa\nL1,CR,,LL\nU1,CR,,\nN1,CR,,AP\nD1,CR,,PA\n")
    loaded = openi.load(root, IngestConfig(path=root, name="o", metadata_csv=metadata))
    assert [(r.filename, r.projection) for r in loaded.rows] == [
        ("F1.png", "Frontal"), ("U1.png", None), ("N1.png", "Frontal"), ("M1.png", None), ("D1.png", "Frontal")]
    assert loaded.rows[2].path == root / openi.IMAGES_DIR / "N1.png" and not loaded.rows[2].path.exists()
    assert loaded.rows[3].path == root / openi.IMAGES_DIR / "M1.png" and not loaded.rows[3].path.exists()
    problems = [str(p) for p in loaded.problems]
    assert problems[0].startswith("ecgen-radiology/2.xml:") and "'../../etc/passwd' is not a plain file name" in problems[0]
    assert problems[1] == f"ecgen-radiology/3.xml:{loaded.rows[4].row}: uid CXR1 is also the uid of ecgen-radiology/1.xml"
    assert any(w.startswith("2 image(s) of unknown view kept (1 a blank View Position, 1 no row in the metadata CSV)")
               for w in loaded.warnings)
    every = openi.load(root, IngestConfig(path=root, name="o", metadata_csv=metadata, all_projections=True))
    assert [r.projection for r in every.rows][:2] == ["Frontal", "Lateral"]
    (tmp_path / "bad.csv").write_text("imageid,view\nF1,PA\n")
    with pytest.raises(InputError, match="missing column.s. View Position"):
        openi.load(root, IngestConfig(path=root, name="o", metadata_csv=tmp_path / "bad.csv"))
    for name in list((root / openi.REPORTS_DIR).iterdir()):
        name.write_text("<eCitation>")
    with pytest.raises(InputError, match="no image row could be read .3 problem.s.") as unreadable:
        openi.load(root, IngestConfig(path=root, name="o"))
    assert all("not well-formed XML (no element found)" in line for line in unreadable.value.details)
    with pytest.raises(InputError, match="holds neither ecgen-radiology/ nor NLMCXR_reports.tgz"):
        openi.load(tmp_path / "store-less", IngestConfig(path=tmp_path, name="o"))
