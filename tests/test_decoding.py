"""Decoding: DICOM by its display rule (modality LUT, VOI LUT or window, MONOCHROME1 inverted, the
output range to 0..255), DICOM refusals, and JPEG decoded by draft to about the model's input size.

Every expected image is computed here from the stored values with numpy, by the formula written out."""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless
from torchvision import transforms

from embedstore import images
from embedstore.dicom import decode_dicom, is_dicom, write_dicom
from embedstore.errors import InputError
from embedstore.images import ImageItem, decode_rgb, image_size, load_rgb, resize_target, verify_image


def _stored(high: int, low: int = 0, shape: tuple[int, int] = (32, 48), seed: int = 0) -> np.ndarray:
    """Random stored values in low..high, with both ends present."""
    values = np.random.default_rng(seed).integers(low, high + 1, shape, dtype=np.int64)
    values[0, 0], values[-1, -1] = low, high
    return values.astype(np.uint16)


def _grey(path: Path) -> np.ndarray:
    """The decoded image's grey channel, after checking R == G == B."""
    image = decode_rgb(path.read_bytes())
    assert image.mode == "RGB"
    rgb = np.asarray(image)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].astype(np.int64)


def _min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return np.rint((values - values.min()) / (values.max() - values.min()) * 255).astype(np.int64)


def _linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), to 0..255."""
    fraction = np.clip((values.astype(np.float64) - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.rint(fraction * 255).astype(np.int64)


def _resaved(path: Path, change: object) -> bytes:
    """The DICOM at `path` with `change(dataset)` applied, as bytes."""
    ds = pydicom.dcmread(path)
    change(ds)  # type: ignore[operator]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The display rule
# ---------------------------------------------------------------------------------------------

def test_monochrome2_12_bit_without_a_window_spans_its_own_min_max(tmp_path: Path) -> None:
    stored = _stored(3000, low=100)
    write_dicom(tmp_path / "a.dcm", stored, bits_stored=12)
    assert (_grey(tmp_path / "a.dcm") == _min_max(stored)).all()


def test_monochrome1_16_bit_is_inverted(tmp_path: Path) -> None:
    """MONOCHROME1: a high stored value is dense (dark); it comes out dark, the lowest white."""
    stored = _stored(60000, low=5000)
    write_dicom(tmp_path / "a.dcm", stored, photometric="MONOCHROME1", bits_stored=16)
    grey = _grey(tmp_path / "a.dcm")
    assert grey[-1, -1] == 0 and grey[0, 0] == 255
    assert (grey == 255 - _min_max(stored)).all()


def test_a_window_maps_its_range_to_0_255_and_clips_outside(tmp_path: Path) -> None:
    stored = _stored(4095)
    centre, width = 1500.0, 1000.0
    write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, window=(centre, width))
    grey = _grey(tmp_path / "a.dcm")
    assert (grey == _linear_window(stored, centre, width)).all()
    assert (grey[stored <= 1000] == 0).all() and (grey[stored >= 2000] == 255).all()
    assert (grey != _min_max(stored)).any()


def test_only_the_first_of_several_windows_is_used(tmp_path: Path) -> None:
    stored = _stored(4095)
    write_dicom(tmp_path / "a.dcm", stored, bits_stored=12)
    data = _resaved(tmp_path / "a.dcm", lambda ds: (setattr(ds, "WindowCenter", ["800", "3000"]),
                                                    setattr(ds, "WindowWidth", ["400", "2000"])))
    grey = np.asarray(decode_rgb(data))[..., 0].astype(np.int64)
    assert (grey == _linear_window(stored, 800, 400)).all()


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path: Path) -> None:
    """The window is in modality units (slope × stored + intercept), not in stored values."""
    stored = _stored(4095)
    slope, intercept, centre, width = 2.0, -1000.0, 1000.0, 2000.0
    write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, rescale=(slope, intercept), window=(centre, width))
    grey = _grey(tmp_path / "a.dcm")
    assert (grey == _linear_window(stored * slope + intercept, centre, width)).all()
    assert (grey != _linear_window(stored, centre, width)).any()


def test_a_negative_rescale_slope_inverts_the_min_max_image(tmp_path: Path) -> None:
    stored = _stored(4095, low=10)
    write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, rescale=(-1.0, 4095.0))
    assert (_grey(tmp_path / "a.dcm") == _min_max(4095.0 - stored)).all()


def test_a_voi_lut_sequence_is_applied_and_its_entries_span_0_255(tmp_path: Path) -> None:
    stored = _stored(99)
    write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, window=(50.0, 10.0))  # the LUT takes precedence
    first, table = 20, (np.arange(60) * 37 % 1000 + 100).astype(np.int64)   # entries 100..1099, not monotone

    def add_lut(ds: Dataset) -> None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(table), first, 16])   # LUT Descriptor: entries, first value, bits
        item.add_new(0x00283006, "US", table.tolist())            # LUT Data
        ds.VOILUTSequence = [item]

    grey = np.asarray(decode_rgb(_resaved(tmp_path / "a.dcm", add_lut)))[..., 0].astype(np.int64)
    looked_up = table[np.clip(stored.astype(np.int64) - first, 0, len(table) - 1)]
    expected = np.rint((looked_up - table.min()) / (table.max() - table.min()) * 255).astype(np.int64)
    assert (grey == expected).all()


def test_a_multi_frame_dicom_decodes_its_first_frame(tmp_path: Path) -> None:
    first = _stored(4095, seed=1)
    write_dicom(tmp_path / "a.dcm", first, bits_stored=12)
    frames = np.stack([first, 4095 - first, first // 2])
    data = _resaved(tmp_path / "a.dcm", lambda ds: ds.set_pixel_data(frames, "MONOCHROME2", 12,
                                                                     generate_instance_uid=False))
    assert pydicom.dcmread(io.BytesIO(data)).NumberOfFrames == 3
    assert (np.asarray(decode_rgb(data))[..., 0] == _min_max(first)).all()


def test_rle_compressed_decodes_as_the_uncompressed_file(tmp_path: Path) -> None:
    stored = _stored(4095)
    write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12, window=(2000.0, 3000.0))
    write_dicom(tmp_path / "rle.dcm", stored, bits_stored=12, window=(2000.0, 3000.0), transfer_syntax=RLELossless)
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    assert (tmp_path / "rle.dcm").read_bytes() != (tmp_path / "plain.dcm").read_bytes()
    assert (_grey(tmp_path / "rle.dcm") == _grey(tmp_path / "plain.dcm")).all()


def test_jpeg_2000_lossless_decodes_as_the_uncompressed_file(tmp_path: Path) -> None:
    from pydicom.pixels import get_encoder

    # pylibjpeg-openjpeg is a declared dependency: a JPEG 2000 codec missing here is a broken install
    assert get_encoder(JPEG2000Lossless).is_available, "pylibjpeg-openjpeg is not installed"
    stored = _stored(4095, shape=(40, 56))   # openjpeg's default 6 resolution levels need sides >= 32
    write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12, photometric="MONOCHROME1")
    write_dicom(tmp_path / "j2k.dcm", stored, bits_stored=12, photometric="MONOCHROME1",
                transfer_syntax=JPEG2000Lossless)
    assert pydicom.dcmread(tmp_path / "j2k.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert (_grey(tmp_path / "j2k.dcm") == _grey(tmp_path / "plain.dcm")).all()


def test_a_dicom_reads_through_load_rgb_and_image_size(tmp_path: Path) -> None:
    stored = _stored(255, shape=(24, 40)).astype(np.uint8)
    write_dicom(tmp_path / "film.dcm", stored)
    image, data = load_rgb(tmp_path / "film.dcm")
    assert data == (tmp_path / "film.dcm").read_bytes() and is_dicom(data)
    assert image.size == (40, 24) and image_size(tmp_path / "film.dcm") == (24, 40)
    assert (np.asarray(image)[..., 1] == _min_max(stored)).all()
    assert image.info == {}                     # nothing of the header travels with the pixels
    assert verify_image(tmp_path / "film.dcm") == data


def test_write_dicom_is_deterministic_and_writes_no_dates_or_names(tmp_path: Path) -> None:
    stored = _stored(4095)
    for name in ("a", "b"):
        write_dicom(tmp_path / f"{name}.dcm", stored, bits_stored=12, view_position="PA", uid_seed="study-1")
    write_dicom(tmp_path / "c.dcm", stored, bits_stored=12, view_position="PA", uid_seed="study-2")
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    a, c = pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "c.dcm")
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.StudyInstanceUID != c.StudyInstanceUID
    assert a.ViewPosition == "PA" and a.Modality == "DX" and a.BitsStored == 12
    assert not [element.keyword for element in a if element.VR in ("DA", "TM", "DT") or
                (element.VR == "PN" and element.value)]


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------

def test_an_undecodable_transfer_syntax_names_the_extra(tmp_path: Path) -> None:
    if importlib.util.find_spec("libjpeg") is not None:
        pytest.skip("pylibjpeg-libjpeg is installed: JPEG Lossless decodes")
    write_dicom(tmp_path / "a.dcm", _stored(4095), bits_stored=12)

    def as_jpeg_lossless(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3\x00\x00\xff\xd9"])
        ds["PixelData"].VR = "OB"

    with pytest.raises(InputError) as caught:
        decode_rgb(_resaved(tmp_path / "a.dcm", as_jpeg_lossless))
    assert str(caught.value) == ("is a DICOM with transfer syntax JPEG Lossless (1.2.840.10008.1.2.4.70) that "
                                 "needs `pip install embedstore[jpeg-lossless]`")


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", RLELossless])
@pytest.mark.parametrize("cut", [10, 1000])
def test_a_truncated_dicom_is_refused(tmp_path: Path, syntax: str, cut: int) -> None:
    write_dicom(tmp_path / "a.dcm", _stored(4095), bits_stored=12, transfer_syntax=syntax)
    data = (tmp_path / "a.dcm").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"^is truncated or not a DICOM image \(.+\)$"):
            decode_rgb(data[:-cut])
    assert [str(warning.message) for warning in caught] == []     # pydicom's complaints are not shown


def test_a_window_of_width_zero_is_refused_in_one_line(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", _stored(4095), bits_stored=12, window=(100.0, 0.0))
    with pytest.raises(InputError, match=r"^is a DICOM whose modality LUT, VOI LUT or window cannot be applied "
                                         r"\(The \(0028,1051\) Window Width must be greater than or equal to 1"):
        decode_rgb((tmp_path / "a.dcm").read_bytes())


def test_a_dicm_preamble_over_garbage_is_refused() -> None:
    garbage = bytes(128) + b"DICM" + bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))
    with pytest.raises(InputError, match=r"^is truncated or not a DICOM image \(.+\)$"):
        decode_rgb(garbage)


def test_rows_times_columns_over_the_limit_is_refused_before_pixels_decode(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels

    write_dicom(tmp_path / "a.dcm", _stored(4095, shape=(64, 64)), bits_stored=12)
    data = (tmp_path / "a.dcm").read_bytes()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 64)
    assert decode_dicom(data).size == (64, 64)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 64 - 1)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    for read in (decode_rgb, lambda raw: images.image_size(tmp_path / "a.dcm")):
        with pytest.raises(InputError, match=r"^is too large: 4,096 pixels, over the limit of 4,095$"):
            read(data)


def test_a_header_claiming_65535_by_65535_is_refused(tmp_path: Path) -> None:
    """Rows and Columns are 16-bit: 65,535 × 65,535 is the most a header can claim."""
    write_dicom(tmp_path / "a.dcm", _stored(4095), bits_stored=12)
    data = _resaved(tmp_path / "a.dcm", lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    with pytest.raises(InputError, match=r"^is too large: 4,294,836,225 pixels, over the limit of 50,000,000$"):
        decode_rgb(data)


# ---------------------------------------------------------------------------------------------
# JPEG draft decoding
# ---------------------------------------------------------------------------------------------

def _film_jpeg(width: int = 2000, height: int = 1600, rgb: bool = False) -> bytes:
    """A smooth film-like picture with grain, as a quality-95 JPEG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    values = 120 + 60 * np.sin(x / 97) * np.cos(y / 53) + 40 * (x / width)
    values += 25 * (((x - width / 2) ** 2 + (y - height / 2) ** 2) < (height / 4) ** 2)
    values += np.random.default_rng(0).normal(0, 3, values.shape)
    image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if rgb:
        image = Image.merge("RGB", [image, image.point(lambda v: 255 - v), image])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


MODEL_PIXELS = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                   transforms.CenterCrop(224), transforms.ToTensor()])


@pytest.mark.parametrize("rgb", [False, True])
def test_a_large_jpeg_is_drafted_to_at_least_the_model_size_and_stays_close(rgb: bool) -> None:
    data = _film_jpeg(rgb=rgb)
    full, drafted = decode_rgb(data), decode_rgb(data, min_side=224)
    assert full.size == (2000, 1600) and drafted.mode == "RGB"
    assert min(drafted.size) >= 224 * images.JPEG_DRAFT_MARGIN and drafted.size < full.size
    a = MODEL_PIXELS(full).numpy() * 255
    b = MODEL_PIXELS(drafted).numpy() * 255
    difference = np.abs(np.rint(a) - np.rint(b))
    assert a.shape == b.shape == (3, 224, 224)
    assert difference.mean() < 0.5 and difference.max() <= 3   # measured: mean 0.13-0.16, max 1 (grey levels)


def test_a_small_jpeg_is_not_drafted() -> None:
    data = _film_jpeg(300, 260)
    assert decode_rgb(data, min_side=224).tobytes() == decode_rgb(data).tobytes()


def test_a_png_is_unaffected_by_min_side() -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_film_jpeg(900, 700))).save(buffer, "PNG")
    assert decode_rgb(buffer.getvalue(), min_side=64).tobytes() == decode_rgb(buffer.getvalue()).tobytes()


def test_the_resize_target_comes_from_the_first_step() -> None:
    assert resize_target(MODEL_PIXELS) == 224
    assert resize_target(transforms.Compose([transforms.Resize((200, 300)), transforms.ToTensor()])) == 300
    assert resize_target(transforms.Compose([transforms.CenterCrop(224), transforms.Resize(224)])) is None
    assert resize_target(transforms.ToTensor()) is None


def test_extraction_decodes_a_jpeg_by_draft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """images.decode (the DataLoader's and tensor cache's decoder) passes the Resize target down."""
    (tmp_path / "film.jpg").write_bytes(_film_jpeg())
    asked = []
    real = images.decode_rgb

    def spy(data: bytes, min_side: int | None = None) -> Image.Image:
        asked.append(min_side)
        return real(data, min_side)

    monkeypatch.setattr(images, "decode_rgb", spy)
    array = images.decode(ImageItem(1, str(tmp_path / "film.jpg"), "x"), MODEL_PIXELS)
    assert asked == [224] and array.dtype == np.uint8 and array.shape == (3, 224, 224)
    expected = np.rint(MODEL_PIXELS(real((tmp_path / "film.jpg").read_bytes(), 224)).numpy() * 255)
    assert (array == expected).all()


def test_verify_image_catches_a_truncated_jpeg(tmp_path: Path) -> None:
    data = _film_jpeg(800, 600)
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert verify_image(tmp_path / "whole.jpg") == data
    with pytest.raises(InputError, match=r"^is truncated or not an image \(.+\)$"):
        verify_image(tmp_path / "cut.jpg")
