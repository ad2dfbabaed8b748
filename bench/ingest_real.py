"""Ingest of real label files (figures in docs/benchmarks.md, "Ingest of real label files").

torchxrayvision's wheel ships the real metadata of several datasets (not their images). This writes
a tiny distinct image at every path the real file names and ingests the whole thing, so the loaders
meet the real files' quirks at full size:

1. CheXpert: `chexpert_train.csv.gz` (223,414 rows) as `train.csv` of a `CheXpert-v1.0-small`
   folder (with an empty `valid.csv`), 16-px JPEGs;
2. IU-Xray as NLM ships it (`openi`): `NLMCXR_reports.tgz` (3,955 XML reports, read from the archive)
   and `nlmcxr_dicom_metadata.csv.gz` (views), 16-px PNGs.

Each is timed against what a notebook does with the same files in the same process: pandas reads
the label table (for OpenI: ElementTree parses each report out of the archive) and every kept
image is opened with `Image.open(p).convert("RGB")`. embedstore does more (every row validated,
every image hashed and decoded by the one decoder, splits by patient, one transaction), so the
ratio says what that costs. Printed: rows, seconds, rows/s, ratio, and the positives per label.

Usage: .venv/bin/python bench/ingest_real.py [--out DIR] [--chexpert-rows N]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedstore.ingest import IngestConfig, ingest
from embedstore.store import Store

log = logging.getLogger("bench")


def _data(name: str) -> Path:
    return Path(str(resources.files("torchxrayvision") / "data" / name))


def _tiny(index: int, fmt: str) -> bytes:
    """A 16-px grey image unique to `index` (distinct bytes, so no identical-image groups): each of its
    four 8 × 8 blocks holds one byte of the index, which survives JPEG's quantisation."""
    pixels = np.zeros((16, 16), dtype=np.uint8)
    for block, value in enumerate(int(index).to_bytes(4, "little")):
        row, column = divmod(block, 2)
        pixels[8 * row:8 * row + 8, 8 * column:8 * column + 8] = value
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _notebook_images(paths: list[Path]) -> None:
    for path in paths:
        Image.open(path).convert("RGB")


def _label_counts(store: Store, name: str) -> dict[str, int]:
    with store.reader() as con:
        rows = con.execute("SELECT l.label, count(*) FILTER (WHERE l.positive) FROM labels l JOIN datasets d "
                           "USING (dataset_id) WHERE d.name = ? GROUP BY l.label ORDER BY l.label", [name]).fetchall()
    return {label: int(count) for label, count in rows}


def chexpert(out: Path, rows: int | None) -> dict[str, object]:
    frame = pd.read_csv(_data("chexpert_train.csv.gz"), dtype=str, keep_default_na=False)
    if rows is not None:
        frame = frame.head(rows)
    folder = out / "chexpert" / "CheXpert-v1.0-small"
    folder.mkdir(parents=True)
    frame.to_csv(folder / "train.csv", index=False)
    frame.head(0).to_csv(folder / "valid.csv", index=False)
    started = time.perf_counter()
    for index, value in enumerate(frame["Path"]):
        target = folder / value.split("/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_tiny(index, "JPEG"))
    log.info("wrote %d JPEGs in %.0f s", len(frame), time.perf_counter() - started)

    started = time.perf_counter()
    table = pd.read_csv(folder / "train.csv")
    frontal = table[table["Frontal/Lateral"] == "Frontal"]
    _notebook_images([folder / p.split("/", 1)[1] for p in frontal["Path"]])
    notebook = time.perf_counter() - started

    store, _ = Store.init(out / "chexpert-store")
    started = time.perf_counter()
    result = ingest(store, IngestConfig(path=folder.parent, name="chexpert"))
    seconds = time.perf_counter() - started
    return {"rows_in_file": len(frame), "samples": result.n_samples, "splits": result.split_counts,
            "seconds": round(seconds, 1), "rows_per_s": round(len(frame) / seconds), "notebook_seconds": round(notebook, 1),
            "ratio_vs_notebook": round(notebook / seconds, 2), "warnings": result.warnings,
            "positives": _label_counts(store, "chexpert")}


def openi(out: Path) -> dict[str, object]:
    archive = _data("NLMCXR_reports.tgz")
    folder = out / "openi"
    png = folder / "NLMCXR_png"
    png.mkdir(parents=True)
    (folder / archive.name).write_bytes(archive.read_bytes())
    images: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                text = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
                images += re.findall(r'<parentImage id="([^"]+)"', text)
    for index, image in enumerate(images):
        (png / f"{image}.png").write_bytes(_tiny(index, "PNG"))

    started = time.perf_counter()
    reports = 0
    with tarfile.open(folder / archive.name) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                ElementTree.parse(tar.extractfile(member))  # noqa: S314 (the notebook's way, for timing only)
                reports += 1
    _notebook_images([png / f"{image}.png" for image in images])
    notebook = time.perf_counter() - started

    store, _ = Store.init(out / "openi-store")
    started = time.perf_counter()
    result = ingest(store, IngestConfig(path=folder, name="openi", metadata_csv=_data("nlmcxr_dicom_metadata.csv.gz")))
    seconds = time.perf_counter() - started
    return {"reports": reports, "images_named": len(images), "samples": result.n_samples, "splits": result.split_counts,
            "seconds": round(seconds, 1), "rows_per_s": round(result.n_samples / seconds),
            "notebook_seconds": round(notebook, 1), "ratio_vs_notebook": round(notebook / seconds, 2),
            "warnings": result.warnings, "positives": _label_counts(store, "openi")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--chexpert-rows", type=int, default=None, help="first N rows only (default: all 223,414)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        report = {"openi": openi(out), "chexpert": chexpert(out, args.chexpert_rows)}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
