"""Hostile ingest input: duplicate or empty column names, rows with the wrong number of fields, loose
label spellings, blank given splits, high-bit-depth images, and image paths that are no image file
(a decompression bomb, /dev/zero, a FIFO, a directory, a NUL byte) — each one clear line, never a
hang, a warning or a traceback, on every path that reads images (ingest, the extraction DataLoader)."""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from embedstore.datasets.manifest import load_manifest
from embedstore.errors import InputError
from embedstore.ingest import IngestConfig, ingest
from embedstore.iuxray import IMAGE_DIR, PROJECTIONS_CSV, REPORTS_CSV, STUDY_CSV, TEXT_COLUMNS
from embedstore.labels import CHEXPERT_LABELS
from embedstore.store import Store

REPO = Path(__file__).resolve().parents[1]

#: The label spellings a CSV may use (after trimming ASCII spaces and tabs), and what each means.
ACCEPTED = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}


# ---------------------------------------------------------------------------------------------
# Tiny datasets
# ---------------------------------------------------------------------------------------------

def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


MANIFEST_HEADER = ["path", "split", "Cardiomegaly"]
MANIFEST_ROWS = [["a.png", "train", "1"], ["b.png", "val", "0"], ["c.png", "test", "0"], ["d.png", "train", "1"]]


def _manifest(folder: Path, rows: list[list[str]] | None = None, header: list[str] | None = None) -> Path:
    """A given-split manifest `m.csv` over four tiny PNGs."""
    for i, name in enumerate("abcd"):
        _png(folder / f"{name}.png", i)
    return _write_csv(folder / "m.csv", header or MANIFEST_HEADER, rows if rows is not None else MANIFEST_ROWS)


IUXRAY_HEADER = ["uid", "filename", *TEXT_COLUMNS, *CHEXPERT_LABELS]


def _iuxray_rows(n: int = 6) -> list[list[str]]:
    return [[str(uid), f"{uid}.png", "x", "x", "x", "x",
             *["1.0" if label == "Cardiomegaly" and uid % 2 else "" for label in CHEXPERT_LABELS]]
            for uid in range(1, n + 1)]


def _iuxray(folder: Path, header: list[str] | None = None, rows: list[list[str]] | None = None) -> Path:
    """The study's CSV (six uids) and its images."""
    for uid in range(1, 7):
        _png(folder / IMAGE_DIR / f"{uid}.png", uid)
    _write_csv(folder / STUDY_CSV, header or IUXRAY_HEADER, rows if rows is not None else _iuxray_rows())
    return folder


def _kaggle(folder: Path) -> Path:
    for uid in range(1, 7):
        _png(folder / IMAGE_DIR / f"{uid}.png", uid)
    _write_csv(folder / REPORTS_CSV, ["uid", "Problems", *TEXT_COLUMNS],
               [[str(uid), "Cardiomegaly" if uid % 2 else "normal", "x", "x", "x", "x"] for uid in range(1, 7)])
    _write_csv(folder / PROJECTIONS_CSV, ["uid", "filename", "projection"],
               [[str(uid), f"{uid}.png", "Frontal"] for uid in range(1, 7)])
    return folder


def _counts(store: Store) -> tuple[int, ...]:
    with store.reader() as con:
        return tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                     for t in ("datasets", "samples", "labels"))


def _refused(store: Store, *fragments: str, **options: object) -> InputError:
    """Ingest is refused with an InputError naming every fragment, and the store is unchanged."""
    before = _counts(store)
    with pytest.raises(InputError) as caught:
        ingest(store, IngestConfig(name="bad", **options))  # type: ignore[arg-type]
    text = "\n".join([*caught.value.details, str(caught.value)])
    for fragment in fragments:
        assert fragment in text, text
    assert _counts(store) == before
    return caught.value


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess with a timeout (a hang fails the test instead of stalling it)."""
    return subprocess.run([sys.executable, "-m", "embedstore.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "default"})


# ---------------------------------------------------------------------------------------------
# Item 8: duplicate and empty column names, every format
# ---------------------------------------------------------------------------------------------

def test_a_duplicated_label_column_in_the_study_csv_is_refused(tmp_store: Store, tmp_path: Path) -> None:
    """`Cardiomegaly` twice, the second all 1.0: it used to make every sample positive."""
    folder = _iuxray(tmp_path / "iu", [*IUXRAY_HEADER, "Cardiomegaly"], [[*r, "1.0"] for r in _iuxray_rows()])
    _refused(tmp_store, STUDY_CSV, "column 'Cardiomegaly' appears more than once in the header", path=folder)
    result = _cli("ingest", str(folder), "--name", "iu", "--store", str(tmp_store.path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"embedstore: error: {folder / STUDY_CSV}: column 'Cardiomegaly' appears more than once in the header "
        "(columns 8 and 21)"]


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_column_name_in_the_study_csv_is_refused(tmp_store: Store, tmp_path: Path, name: str) -> None:
    folder = _iuxray(tmp_path / "iu", [*IUXRAY_HEADER[:3], name, *IUXRAY_HEADER[3:]],
                     [[*r[:3], "", *r[3:]] for r in _iuxray_rows()])
    _refused(tmp_store, f"{STUDY_CSV}: column 4 of the header has an empty name", path=folder)


@pytest.mark.parametrize("file, column", [(REPORTS_CSV, "Problems"), (PROJECTIONS_CSV, "filename")])
def test_duplicate_columns_in_the_kaggle_pair_are_refused(tmp_store: Store, tmp_path: Path, file: str,
                                                          column: str) -> None:
    folder = _kaggle(tmp_path / "kg")
    with open(folder / file, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    _write_csv(folder / file, [*header, column], [[*r, r[header.index(column)]] for r in rows])
    _refused(tmp_store, f"{file}: column {column!r} appears more than once", path=folder, format="kaggle")


@pytest.mark.parametrize("duplicate", [True, False])
def test_duplicate_or_empty_columns_in_a_kaggle_labels_csv_are_refused(tmp_store: Store, tmp_path: Path,
                                                                      duplicate: bool) -> None:
    folder = _kaggle(tmp_path / "kg")
    extra = "Cardiomegaly" if duplicate else ""
    labels = _write_csv(tmp_path / "chexpert.csv", ["uid", *CHEXPERT_LABELS, extra],
                        [[str(uid), *[""] * len(CHEXPERT_LABELS), "1.0"] for uid in range(1, 7)])
    expected = "column 'Cardiomegaly' appears more than once" if duplicate else "column 16 of the header has an empty name"
    _refused(tmp_store, f"chexpert.csv: {expected}", path=folder, format="kaggle", labels_csv=labels)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("extra, expected", [
    ("Cardiomegaly", "column 'Cardiomegaly' appears more than once in the header (columns 3 and 4)"),
    ("split", "column 'split' appears more than once"),
    ("", "column 4 of the header has an empty name"),
])
def test_duplicate_or_empty_manifest_columns_are_refused(tmp_store: Store, tmp_path: Path, suffix: str, extra: str,
                                                         expected: str) -> None:
    header = [*MANIFEST_HEADER, extra]
    rows = [[*r, "1"] for r in MANIFEST_ROWS]
    path = _manifest(tmp_path, rows, header)
    if suffix == ".parquet":
        path = tmp_path / "m.parquet"
        pq.write_table(pa.Table.from_arrays([pa.array([r[i] for r in rows]) for i in range(len(header))],
                                            names=header), path)
    _refused(tmp_store, f"{path.name}: {expected}", path=path)


# ---------------------------------------------------------------------------------------------
# Item 11: every row has the header's number of fields; label values are exactly listed
# ---------------------------------------------------------------------------------------------

def test_rows_with_more_or_fewer_fields_than_the_header_are_bad_rows(tmp_store: Store, tmp_path: Path) -> None:
    rows = [*[list(r) for r in MANIFEST_ROWS], ["e.png", "val", "0"]]
    rows[1].append("1")  # row 3: the extra field used to be dropped silently
    rows[3] = rows[3][:2]  # row 5: the missing label used to become blank
    _png(tmp_path / "e.png", 5)
    path = _manifest(tmp_path, rows)
    error = _refused(tmp_store, "m.csv:3: 4 fields, but the header has 3", "m.csv:5: 2 fields, but the header has 3",
                     "2 bad row(s)", path=path)
    assert len(error.details) == 2
    result = ingest(tmp_store, IngestConfig(path=path, name="ok", skip_bad=True))
    assert result.n_samples == 3 and len(result.skipped) == 2


def test_a_long_first_row_is_a_bad_row_too(tmp_store: Store, tmp_path: Path) -> None:
    rows = [list(r) for r in MANIFEST_ROWS]
    rows[0].append("")
    _refused(tmp_store, "m.csv:2: 4 fields, but the header has 3", path=_manifest(tmp_path, rows))


def test_a_study_csv_row_with_a_field_too_many_is_a_bad_row(tmp_store: Store, tmp_path: Path) -> None:
    rows = _iuxray_rows()
    rows[4].append("1.0")
    folder = _iuxray(tmp_path / "iu", rows=rows)
    _refused(tmp_store, f"{STUDY_CSV}:6: 21 fields, but the header has 20", path=folder)


def test_a_malformed_reports_row_is_listed_and_cannot_be_skipped(tmp_store: Store, tmp_path: Path) -> None:
    folder = _kaggle(tmp_path / "kg")
    with open(folder / REPORTS_CSV, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    rows[2].append("stray")
    _write_csv(folder / REPORTS_CSV, header, rows)
    for skip_bad in (False, True):
        _refused(tmp_store, f"{REPORTS_CSV}:4: 7 fields, but the header has 6", path=folder, format="kaggle",
                 skip_bad=skip_bad)


@pytest.mark.parametrize("value", ["１", "1e0", "+1", "-0", "1.00", "01", "true", "0x1", "nan", "٣", "1\u00a0", "−1"])
def test_loose_label_spellings_are_bad_rows(tmp_store: Store, tmp_path: Path, value: str) -> None:
    rows = [list(r) for r in MANIFEST_ROWS]
    rows[2][2] = value
    _refused(tmp_store, f"m.csv:4: column 'Cardiomegaly': value {value!r} is not 1, 1.0, 0, 0.0, -1, -1.0 or blank",
             path=_manifest(tmp_path, rows))


def _load_one_value(folder: Path, value: str):
    path = folder / "one.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows([["path", "Cardiomegaly"], ["a.png", value]])
    return load_manifest(path, IngestConfig(path=path, name="x"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(
    st.text(max_size=8),
    st.from_regex(r"[ \t]*[-+]?[0-9１.eE]{0,4}[ \t]*", fullmatch=True),
    st.builds(lambda left, core, right: left + core + right, st.sampled_from(["", " ", "\t", "  "]),
              st.sampled_from(sorted(ACCEPTED)), st.sampled_from(["", " ", "\t", "\u00a0", "\n"])),
))
def test_any_label_text_outside_the_accepted_spellings_is_a_bad_row(tmp_path: Path, value: str) -> None:
    loaded = _load_one_value(tmp_path, value)
    core = value.strip(" \t")
    if core in ACCEPTED:
        assert loaded.problems == [] and loaded.rows[0].values == {"Cardiomegaly": ACCEPTED[core]}
    else:
        assert [(p.file, p.row) for p in loaded.problems] == [("one.csv", 2)], value
        assert "column 'Cardiomegaly'" in loaded.problems[0].message


@pytest.mark.parametrize("values, expected_bad", [
    (pa.array([1, 0, -1, None], pa.int64()), []),
    (pa.array([1.0, 0.0, -1.0, None]), []),
    (pa.array([1.0, float("nan"), 2.0, 0.5]), [3, 4, 5]),
    (pa.array([True, False, None, None]), [2, 3]),
    (pa.array(["1", "1e0", "-0", ""]), [3, 4]),
])
def test_parquet_label_columns_take_numbers_or_the_same_spellings(tmp_path: Path, values: pa.Array,
                                                                  expected_bad: list[int]) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [f"{c}.png" for c in "abcd"], "Cardiomegaly": values}), path)
    loaded = load_manifest(path, IngestConfig(path=path, name="x"))
    assert sorted(p.row for p in loaded.problems) == expected_bad
    good = [r.values["Cardiomegaly"] for r in loaded.rows if r.row not in expected_bad]
    assert all(v in (1, 0, -1, None) for v in good)


def test_parse_label_value_maps_exactly_the_listed_spellings() -> None:
    from embedstore.labels import LABEL_VALUES, parse_label_value

    assert LABEL_VALUES == ACCEPTED
    for text, value in ACCEPTED.items():
        assert parse_label_value(f" {text}\t") == value
    for number, value in ((1, 1), (0, 0), (-1, -1), (1.0, 1), (-1.0, -1), (None, None)):
        assert parse_label_value(number) == value
    for bad in ("１", "+1", True, 2, float("nan"), float("inf"), b"1"):
        with pytest.raises(ValueError):
            parse_label_value(bad)


# ---------------------------------------------------------------------------------------------
# Item 10: a blank split in a given-split manifest
# ---------------------------------------------------------------------------------------------

def test_a_blank_given_split_is_a_bad_row(tmp_store: Store, tmp_path: Path) -> None:
    rows = [*MANIFEST_ROWS, ["e.png", "", "0"], ["f.png", " ", "1"]]
    _png(tmp_path / "e.png", 5)
    _png(tmp_path / "f.png", 6)
    path = _manifest(tmp_path, rows)
    error = _refused(tmp_store, "m.csv:6: split is blank", "m.csv:7: split is blank", "2 bad row(s)", path=path)
    assert len(error.details) == 2
    result = ingest(tmp_store, IngestConfig(path=path, name="ok", skip_bad=True))
    assert result.n_samples == 4 and result.split_counts == {"train": 2, "val": 1, "test": 1}
    with tmp_store.reader() as con:
        assert {r[0] for r in con.execute("SELECT DISTINCT split FROM samples").fetchall()} == {"train", "val", "test"}
    # A split computed by embedstore ignores the column, blanks included.
    assert ingest(tmp_store, IngestConfig(path=path, name="study", split="study")).n_samples == 6


# ---------------------------------------------------------------------------------------------
# Item 9: 16-bit and other high-bit-depth images keep their content
# ---------------------------------------------------------------------------------------------

def _gradient(high: int, size: int = 64) -> np.ndarray:
    """A diagonal gradient 0..high with a bright disc: content a decoder must not flatten."""
    y, x = np.mgrid[0:size, 0:size]
    base = (x + y) / (2 * (size - 1)) * high * 0.8
    disc = ((x - size / 3) ** 2 + (y - size / 2) ** 2 < (size / 6) ** 2) * high * 0.2
    return base + disc


def _pixels(path: Path, tmp_path: Path) -> np.ndarray:
    """The image as the extraction DataLoader and Grad-CAM see it (uint8 CHW, through the tensor cache)."""
    from torchvision import transforms

    from embedstore.images import CachedImages, ImageItem, TensorCache

    cache = TensorCache(tmp_path / "cache", "test")
    images = CachedImages([ImageItem(1, str(path), path.name)], cache, transforms.ToTensor())
    first = images[0][1].numpy()
    assert np.array_equal(images[0][1].numpy(), first)  # the second read comes from the cache
    return first


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.mark.parametrize("high", [65535, 4095, 1023])
def test_a_16_bit_png_keeps_its_content(tmp_path: Path, high: int) -> None:
    """Full-range 16-bit, and 12- and 10-bit detector values stored in a 16-bit PNG."""
    original = np.rint(_gradient(high)).astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(original).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    pixels = _pixels(path, tmp_path)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.uint8
    assert (pixels == 255).mean() < 0.1
    assert pixels.min() == 0 and pixels.max() == 255  # windowed to the image's own range
    assert _correlation(pixels[0], original) > 0.999
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])


def _as_mode(mode: str, original: np.ndarray) -> Image.Image:
    """`original` (0..255) as an image of `mode`, its values spread over that mode's range."""
    gray = np.rint(original).astype(np.uint8)
    if mode.startswith("I;16"):
        endian = ">u2" if mode == "I;16B" else "<u2"
        values = (gray.astype(np.uint16) * 200 + 300).astype(endian)
        return Image.frombytes(mode, (gray.shape[1], gray.shape[0]), values.tobytes())
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 70000 - 5_000_000)
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 255 * 3.5 - 1.0)
    if mode == "1":
        return Image.fromarray(gray > 128)
    if mode in ("P", "PA"):
        palette = Image.frombytes("P", (gray.shape[1], gray.shape[0]), gray.tobytes())
        palette.putpalette([v for i in range(256) for v in (i, i, i)])
        return palette if mode == "P" else palette.convert("PA")
    via = {"La": "LA", "RGBa": "RGBA"}.get(mode, mode)
    return Image.fromarray(gray).convert(via).convert(mode)


def _expected(mode: str, original: np.ndarray) -> np.ndarray:
    return (original > 128).astype(np.float64) if mode == "1" else original


@pytest.mark.parametrize("mode, fmt", [
    ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "PNG"),
    ("RGBA", "PNG"), ("CMYK", "TIFF"), ("CMYK", "JPEG"), ("1", "PNG"), ("YCbCr", "JPEG"),
])
def test_every_image_file_mode_decodes_to_content_preserving_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    original = _gradient(255)
    image = _as_mode(mode, original)
    assert image.mode == mode
    path = tmp_path / f"x.{fmt.lower()}"
    image.save(path, format=fmt)
    pixels = _pixels(path, tmp_path)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.uint8
    assert (pixels == 255).mean() < 0.5
    assert _correlation(pixels.mean(axis=0), _expected(mode, original)) > 0.98


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I", "F", "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA",
                                  "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"])
def test_every_image_mode_decodes_to_content_preserving_rgb(mode: str) -> None:
    """Modes no common file format writes (PA, La, I;16L, …) through the same decoder, in memory."""
    from embedstore.images import to_rgb8

    original = _gradient(255)
    image = _as_mode(mode, original)
    assert image.mode == mode
    rgb = to_rgb8(image)
    assert rgb.mode == "RGB" and rgb.size == (64, 64)
    pixels = np.asarray(rgb)
    assert (pixels == 255).mean() < 0.5
    assert _correlation(pixels.mean(axis=-1), _expected(mode, original)) > 0.98


def test_a_float_image_with_nan_and_inf_decodes(tmp_path: Path) -> None:
    from embedstore.images import to_rgb8

    values = _gradient(1.0).astype(np.float32)
    values[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    pixels = np.asarray(to_rgb8(Image.fromarray(values)))[..., 0]
    assert pixels[0, 0] == 0 and pixels[0, 1] == 255 and pixels[0, 2] == 0
    assert _correlation(pixels[1:], values[1:]) > 0.999
    assert np.asarray(to_rgb8(Image.fromarray(np.full((4, 4), 7, np.uint16)))).max() == 0  # uniform: black


def test_8_bit_images_decode_exactly_as_stored(tmp_path: Path) -> None:
    """Windowing is for high-bit-depth images only; an 8-bit film is used as stored."""
    original = np.rint(_gradient(200)).astype(np.uint8)
    Image.fromarray(original).save(tmp_path / "x.png")
    assert np.array_equal(_pixels(tmp_path / "x.png", tmp_path)[0], original)


def test_the_preprocessing_key_names_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors cached (and runs identified) under the old clipping decoder are not reused."""
    import embedstore.images as images
    from embedstore.models import _preprocess_key

    before = _preprocess_key("transform", (0.5,), (0.25,))
    monkeypatch.setattr(images, "DECODER_KEY", images.DECODER_KEY + "-changed")
    assert _preprocess_key("transform", (0.5,), (0.25,)) != before


def test_a_16_bit_dataset_ingests(tmp_store: Store, tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    Image.fromarray(np.rint(_gradient(4095)).astype(np.uint16)).save(tmp_path / "b.png")
    assert ingest(tmp_store, IngestConfig(path=path, name="m")).n_samples == 4


def test_every_image_is_opened_through_the_one_decoder() -> None:
    """Ingest validation, the extraction DataLoader, the tensor cache and Grad-CAM read images only
    through embedstore.images (annotation masks too)."""
    offenders = []
    for folder in ("embedstore", "analyses", "cli"):
        for source in (REPO / folder).rglob("*.py"):
            if source.name in ("images.py", "synthetic.py", "demo_model.py"):
                continue
            text = source.read_text()
            offenders += [f"{source.relative_to(REPO)}: {term}" for term in ("Image.open(", '.convert("RGB")')
                          if term in text]
    assert offenders == []


# ---------------------------------------------------------------------------------------------
# Item 17: paths that are no image file, and decompression bombs
# ---------------------------------------------------------------------------------------------

def _bomb(path: Path, side: int) -> Path:
    """A valid 1-bit PNG of side × side black pixels: a few kilobytes on disk, side² pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    body = b"".join(compressor.compress(row * 500) for _ in range(side // 500))
    body += compressor.compress(row * (side % 500)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [8000, 10000, 20000])
def test_images_over_the_pixel_limit_are_bad_rows_without_a_warning(tmp_store: Store, tmp_path: Path,
                                                                    side: int) -> None:
    """64 MP (over our 50 MP limit), 100 MP (Pillow warns) and 400 MP (Pillow raises) alike."""
    bomb = _bomb(tmp_path / "bomb.png", side)
    assert bomb.stat().st_size < 200_000
    path = _manifest(tmp_path, [*MANIFEST_ROWS, ["bomb.png", "train", "0"]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _refused(tmp_store, f"m.csv:6: image bomb.png is too large: {side * side:,} pixels, over the limit of "
                 "50,000,000", path=path)
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]


def test_a_bomb_is_one_bad_row_from_the_shell(tmp_store: Store, tmp_path: Path) -> None:
    _bomb(tmp_path / "bomb.png", 10000)
    path = _manifest(tmp_path, [*MANIFEST_ROWS, ["bomb.png", "train", "0"]])
    result = _cli("ingest", str(path), "--name", "m", "--store", str(tmp_store.path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "m.csv:6: image bomb.png is too large: 100,000,000 pixels, over the limit of 50,000,000",
        "embedstore: error: 1 bad row(s) in m.csv (listed above); fix them or skip them (--skip-bad)"]


def _hostile_paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Manifest path values that are no regular file, and the reason each must be refused with."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    return {
        "dev_zero": ("/dev/zero", "image /dev/zero is a character device, not a regular file"),
        "fifo": (str(fifo), f"image {fifo} is a FIFO, not a regular file"),
        "directory": ("folder.png", "image folder.png is a directory, not a regular file"),
        "symlink": ("zero.png", "image zero.png is a character device, not a regular file"),
        "nul": ("a\x00.png", "image a\\x00.png has a NUL byte in its path"),
    }


def _unblock_fifo_later(fifo: Path) -> threading.Timer:
    """Should a regression open the FIFO, end its read after 30 s so the test fails rather than hangs."""
    def unblock() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    timer = threading.Timer(30, unblock)
    timer.start()
    return timer


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory", "symlink", "nul"])
def test_paths_that_are_no_regular_file_are_bad_rows(tmp_store: Store, tmp_path: Path, kind: str) -> None:
    value, message = _hostile_paths(tmp_path)[kind]
    path = _manifest(tmp_path, [*MANIFEST_ROWS, [value, "train", "0"]])
    result = _cli("ingest", str(path), "--name", "m", "--store", str(tmp_store.path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"m.csv:6: {message}",
        "embedstore: error: 1 bad row(s) in m.csv (listed above); fix them or skip them (--skip-bad)"]
    assert _counts(tmp_store) == (0, 0, 0)


def test_skip_bad_skips_every_hostile_path(tmp_store: Store, tmp_path: Path) -> None:
    hostile = _hostile_paths(tmp_path)
    _bomb(tmp_path / "bomb.png", 20000)
    rows = [*MANIFEST_ROWS, *[[value, "train", "0"] for value, _ in hostile.values()], ["bomb.png", "val", "1"]]
    timer = _unblock_fifo_later(tmp_path / "pipe.png")
    try:
        result = ingest(tmp_store, IngestConfig(path=_manifest(tmp_path, rows), name="m", skip_bad=True))
    finally:
        timer.cancel()
    assert result.n_samples == 4 and len(result.skipped) == len(hostile) + 1
    for (_, message), skipped in zip(hostile.values(), result.skipped, strict=False):
        assert message in skipped


def test_an_oversized_image_file_is_refused_unread(tmp_store: Store, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
    _png(tmp_path / "a.png")
    with open(tmp_path / "a.png", "ab") as handle:
        handle.write(bytes(200))
    _refused(tmp_store, "m.csv:2: image a.png is larger than the limit of 100 bytes", path=_manifest(tmp_path))


def test_control_characters_in_paths_are_escaped_in_messages(tmp_store: Store, tmp_path: Path) -> None:
    """A path value is printed on a terminal: an escape sequence in it must not reach the terminal raw."""
    hostile = "e\x1b[2J\x1b]0;owned\x07.png"
    path = _manifest(tmp_path, [*MANIFEST_ROWS, [hostile, "train", "0"], [hostile, "val", "0"]])
    result = _cli("ingest", str(path), "--name", "m", "--store", str(tmp_store.path))
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "m.csv:6: image e\\x1b[2J\\x1b]0;owned\\x07.png not found at" in result.stderr
    assert "m.csv:7: duplicate filename e\\x1b[2J\\x1b]0;owned\\x07.png (first at row 6)" in result.stderr


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "SGI", "EPS"])
def test_formats_outside_the_list_are_not_decoded(tmp_store: Store, tmp_path: Path, fmt: str) -> None:
    """Only PNG, JPEG, TIFF, BMP, GIF, WebP, JPEG 2000 and PNM reach a Pillow decoder (EPS would run
    Ghostscript; rarely used decoders are where Pillow's memory-safety bugs were)."""
    path = _manifest(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("RGB" if fmt == "EPS" else "L").save(tmp_path / "b.png",
                                                                                         format=fmt)
    _refused(tmp_store, "m.csv:3: image b.png is truncated or not an image (not a PNG, JPEG, TIFF, BMP, GIF, WEBP, "
             "JPEG2000 or PPM file)", path=path)


def test_the_extraction_dataloader_refuses_the_same_paths_in_one_line(tmp_path: Path) -> None:
    """The files changed after ingest: a worker process meets them and the error is still one line."""
    from torchvision import transforms

    from embedstore.images import CachedImages, ImageItem, TensorCache, batches

    hostile = _hostile_paths(tmp_path)
    paths = {kind: str(tmp_path / value) if not os.path.isabs(value) else value for kind, (value, _) in hostile.items()}
    paths["bomb"] = str(_bomb(tmp_path / "bomb.png", 20000))
    paths["missing"] = str(tmp_path / "gone.png")
    good = _png(tmp_path / "good.png")
    cache = TensorCache(tmp_path / "cache", "test")
    timer = _unblock_fifo_later(tmp_path / "pipe.png")
    try:
        for kind, path in paths.items():
            dataset = CachedImages([ImageItem(1, str(good), "g" * 64), ImageItem(7, path, f"{kind:x<64}")], cache,
                                   transforms.ToTensor())
            with pytest.raises(InputError) as caught:
                list(batches(dataset, batch_size=2, workers=1))
            message = str(caught.value)
            assert "\n" not in message and "Traceback" not in message and "\x00" not in message, message
            assert message.startswith("image ") and "(sample 7)" in message, message
    finally:
        timer.cancel()


def test_a_mask_that_is_no_regular_file_is_named_not_read(tmp_path: Path) -> None:
    """A FIFO or a device given as an annotation mask is refused before it is opened (it would block
    or never end), through the images' own reader."""
    from embedstore.annotation_sets import Region
    from embedstore.annotation_sets.png_masks import png_mask
    from embedstore.annotations import InputGeometry

    fifo = tmp_path / "mask.png"
    os.mkfifo(fifo)
    geometry = InputGeometry(original=(8, 8), resized=(8, 8), top=0, left=0, crop=(8, 8))
    for path in (fifo, Path("/dev/zero"), tmp_path):
        region = Region("a.png", "Cardiomegaly", f"{path}", "reader", png_mask(path))
        with pytest.raises(InputError, match="not a regular file"):
            region.input_mask(geometry)


# ---------------------------------------------------------------------------------------------
# Hostile DICOM: a header claiming a huge image, pixel data cut short, a DICM preamble over garbage
# ---------------------------------------------------------------------------------------------

def _hostile_dicoms(folder: Path) -> dict[str, str]:
    """Three DICOM files that must be bad rows, and the start of the reason each is refused with."""
    import pydicom

    from embedstore.dicom import write_dicom

    stored = np.random.default_rng(0).integers(0, 4096, (32, 32), dtype=np.uint16)
    write_dicom(folder / "whole.dcm", stored, bits_stored=12)
    ds = pydicom.dcmread(folder / "whole.dcm")
    ds.Rows, ds.Columns = 65535, 65535          # 16-bit fields: the largest image a header can claim
    ds.save_as(folder / "huge.dcm", enforce_file_format=True)
    whole = (folder / "whole.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(whole[:-1000])
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (folder / "junk.dcm").write_bytes(bytes(128) + b"DICM" + noise)
    return {"huge.dcm": "is too large: 4,294,836,225 pixels, over the limit of 50,000,000",
            "cut.dcm": "is truncated or not a DICOM image (",
            "junk.dcm": "is truncated or not a DICOM image ("}


@pytest.mark.parametrize("name", ["huge.dcm", "cut.dcm", "junk.dcm"])
def test_a_hostile_dicom_is_a_bad_row(tmp_store: Store, tmp_path: Path, name: str) -> None:
    reason = _hostile_dicoms(tmp_path)[name]
    path = _manifest(tmp_path, [*MANIFEST_ROWS, [name, "train", "0"], ["whole.dcm", "val", "1"]])
    error = _refused(tmp_store, f"m.csv:6: image {name} {reason}", path=path)
    assert len(error.details) == 1, error.details


def test_hostile_dicoms_are_bad_rows_from_the_shell(tmp_store: Store, tmp_path: Path) -> None:
    reasons = _hostile_dicoms(tmp_path)
    path = _manifest(tmp_path, [*MANIFEST_ROWS, *[[name, "train", "0"] for name in reasons]])
    result = _cli("ingest", str(path), "--name", "m", "--store", str(tmp_store.path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 4, lines
    for line, (row, (name, reason)) in zip(lines, enumerate(reasons.items(), start=6), strict=False):
        assert line.startswith(f"m.csv:{row}: image {name} {reason}"), line
    assert lines[-1] == "embedstore: error: 3 bad row(s) in m.csv (listed above); fix them or skip them (--skip-bad)"
    assert _counts(tmp_store) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Dataset layouts: an id or Path read from the dataset's own files never reaches outside its folder
# ---------------------------------------------------------------------------------------------

def _rewrite_first_value(path: Path, column: str, value: str) -> str:
    """Put `value` into `column` of the first data row of a (gzipped) CSV; returns the old value."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:  # type: ignore[operator]
        rows = list(csv.reader(handle))
    index = rows[0].index(column)
    old, rows[1][index] = rows[1][index], value
    with opener(path, "wt", newline="", encoding="utf-8") as handle:  # type: ignore[operator]
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return old


@pytest.mark.parametrize(("layout", "csv_name", "column", "value", "reason"), [
    ("chexpert", "train.csv", "Path", "CheXpert-v1.0-small/train/../../../outside/patient1/study1/view1_frontal.jpg",
     "has a `..` part"),
    ("chexpert", "train.csv", "Path", "/etc/patient1/study1/view1_frontal.jpg", "is absolute"),
    ("mimic-cxr", "mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id", "../../../../outside", "is not a plain file name"),
    ("vindr-cxr", "annotations/image_labels_train.csv", "image_id", "../../outside", "is not a plain file name"),
])
def test_a_layout_path_that_leaves_the_dataset_folder_is_a_bad_row(tmp_store: Store, tmp_path: Path, layout: str,
                                                                    csv_name: str, column: str, value: str,
                                                                    reason: str) -> None:
    from embedstore.synthetic import SampleConfig, write_layout

    folder = write_layout(layout, SampleConfig(out=tmp_path / "d", n=16, seed=2, size=64, workers=1))
    _rewrite_first_value(folder / csv_name, column, value)
    with pytest.raises(InputError) as raised:
        ingest(tmp_store, IngestConfig(path=folder, name="x"))
    assert any(reason in line for line in raised.value.details), raised.value.details
    assert _counts(tmp_store) == (0, 0, 0)


def test_vindr_with_both_spellings_of_a_label_column_is_refused_in_one_line(tmp_store: Store, tmp_path: Path) -> None:
    from embedstore.synthetic import SampleConfig, write_layout

    folder = write_layout("vindr-cxr", SampleConfig(out=tmp_path / "d", n=16, seed=2, size=64, workers=1))
    train = folder / "annotations" / "image_labels_train.csv"
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0] + ",Other disease", *(line + ",0" for line in lines[1:])]) + "\n")
    result = _cli("ingest", str(folder), "--name", "v", "--store", str(tmp_store.path))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"embedstore: error: {train}: columns 'Other disease' and 'Other diseases' are both present; they are one "
        "label (the test file's and the train file's spelling)"]
    assert _counts(tmp_store) == (0, 0, 0)
