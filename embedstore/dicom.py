"""DICOM radiographs: decoded to 8-bit RGB by one fixed display rule, and written (synthetic samples, tests).

Decoding (`decode_dicom`, reached through `images.decode_rgb` for any bytes with the `DICM` preamble)
keeps nothing of the header but what turns stored values into the picture a reader sees:

1. the modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence);
2. the first VOI LUT (VOI LUT Sequence, else the first Window Center / Width with its VOI LUT Function),
   whose output range — the LUT's own entries, or the window's output range — becomes 0..255; without
   a VOI, the image's own min..max becomes 0..255 (the rule `images.to_rgb8` applies to 16-bit PNG);
3. MONOCHROME1 inverted (255 - value), so a dense bone is bright in every image;
4. grey repeated in R, G and B; colour DICOM (RGB, YBR) as 8-bit RGB.

Multi-frame files: the first frame only is decoded (a radiograph is one frame; tomosynthesis or
cine series are not what a chest-film model reads). Rows × Columns is checked against
`images.MAX_IMAGE_PIXELS` before a byte of pixel data is decoded. Patient, study and device fields are
read by pydicom with the rest of the header and dropped with it: nothing of them is stored.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedstore.errors import InputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

#: Where the DICOM Part 10 magic sits: a 128-byte preamble, then b"DICM".
DICM_OFFSET = 128
DICM_MAGIC = b"DICM"
#: pip extra that installs the (GPL-3.0) libjpeg plugin for the JPEG transfer syntaxes Pillow cannot decode.
JPEG_LOSSLESS_EXTRA = "embedstore[jpeg-lossless]"
#: Root of the UIDs `write_dicom` derives (pydicom's own root for generated UIDs).
UID_ROOT = "1.2.826.0.1.3680043.8.498."
#: SOP classes `write_dicom` writes: Digital X-Ray (for presentation) and Computed Radiography.
SOP_CLASSES = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1"}

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
#: Photometric interpretations decoded: greyscale, and colour that pydicom converts to RGB.
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")


def is_dicom(data: bytes) -> bool:
    """True when `data` starts like a DICOM Part 10 file (128-byte preamble, then b"DICM")."""
    return data[DICM_OFFSET:DICM_OFFSET + len(DICM_MAGIC)] == DICM_MAGIC


def _uid(*parts: object) -> UID:
    """A UID derived only from `parts` (pydicom hashes them), so a writer is deterministic for a seed."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_ROOT, entropy_srcs=[str(part) for part in parts])


def write_dicom(path: str | os.PathLike[str], pixels: np.ndarray, *, photometric: Photometric = "MONOCHROME2",
                bits_stored: int | None = None, window: tuple[float, float] | None = None,
                view_position: str | None = None, transfer_syntax: str = "1.2.840.10008.1.2.1",
                uid_seed: str | None = None, rescale: tuple[float, float] | None = None,
                modality: Literal["DX", "CR"] = "DX", patient_id: str = "") -> str:
    """Write one greyscale radiograph as a minimal valid DICOM Part 10 file; returns its SOP Instance UID.

    `pixels`: a 2-D uint8 or uint16 array of stored values (for MONOCHROME1, high = dark). `bits_stored`
    defaults to the array's depth; every value must fit in it. `window` is (centre, width), written as
    Window Center / Width; `rescale` is (slope, intercept). `transfer_syntax`: Explicit VR Little Endian
    (default), RLE Lossless (pydicom's own encoder) or JPEG 2000 Lossless (pylibjpeg-openjpeg, whose
    default six resolution levels need both sides >= 32 px; pydicom raises RuntimeError otherwise). UIDs are
    derived from `uid_seed` (default: a hash of the pixels), never random, so the file is the same
    bytes for the same arguments. No dates, names or device fields are written.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_dicom takes a 2-D uint8 or uint16 array, not {pixels.dtype} of shape {pixels.shape}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    depth = pixels.dtype.itemsize * 8
    bits = depth if bits_stored is None else bits_stored
    if not 1 <= bits <= depth:
        raise ValueError(f"bits_stored {bits} does not fit a {pixels.dtype} array")
    if pixels.size and int(pixels.max()) >= 2 ** bits:
        raise ValueError(f"pixel value {int(pixels.max())} does not fit in {bits} stored bits")
    syntax = UID(transfer_syntax)
    seed = uid_seed if uid_seed is not None else _pixels_digest(pixels)
    instance_uid = _uid(seed, "instance")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SOP_CLASSES[modality])
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(SOP_CLASSES[modality])
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series")
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, bits, generate_instance_uid=False)
    if rescale is not None:
        ds.RescaleSlope = f"{rescale[0]:g}"
        ds.RescaleIntercept = f"{rescale[1]:g}"
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return str(instance_uid)


def _pixels_digest(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes() + str(pixels.shape).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def _corrupt(error: BaseException | str) -> InputError:
    from embedstore.images import shown

    reason = shown(error).split(" - ")[0].strip()[:100]  # pydicom's first clause: "... (2038 vs 2048 bytes)"
    return InputError(f"is truncated or not a DICOM image ({reason or type(error).__name__})")


def _syntax_name(syntax: Any) -> str:
    """"JPEG Lossless (1.2.840.10008.1.2.4.70)": the transfer syntax's name up to its first comma, and UID."""
    name = str(getattr(syntax, "name", "") or "")
    short = name.split(", ")[0] if name and name != str(syntax) else "unknown"
    return f"{short} ({syntax})"


def _quiet_pydicom() -> None:
    """pydicom warns about every oddity it reads past (a value of the wrong length, a file ending
    before a delimiter): what matters reaches the caller as an InputError, so its warnings are never
    shown. Filters are process-wide (not `catch_warnings`, which is unsafe in ingest's threads);
    adding the same filter again replaces it."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=r"embedstore\.dicom$")


def read_header(data: bytes) -> Dataset:
    """The parsed DICOM of `data`, refused (InputError reason) unless its first frame can be decoded:
    a readable header with integer pixel data, Rows × Columns within images.MAX_IMAGE_PIXELS, a
    photometric interpretation that is read, and a transfer syntax this installation decodes.
    No pixel data is decoded here."""
    from pydicom import dcmread
    from pydicom.pixels import get_decoder

    from embedstore.images import MAX_IMAGE_PIXELS, shown, too_large

    _quiet_pydicom()
    try:  # a parser over untrusted bytes raises anything (struct.error, EOFError, KeyError, …): all are one reason
        ds = dcmread(io.BytesIO(data), force=False)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        has_pixels = "PixelData" in ds
        float_pixels = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    except Exception as error:  # noqa: BLE001 — see above
        raise _corrupt(error) from None
    if float_pixels:
        raise InputError("is a DICOM with float pixel data, which is not read (integer pixel data only)")
    if not has_pixels or rows <= 0 or columns <= 0 or syntax is None:  # pydicom stops quietly where a file ends
        raise _corrupt("no pixel data" if not has_pixels else "no Rows, Columns or transfer syntax in its header")
    if rows * columns > MAX_IMAGE_PIXELS:
        raise too_large(rows * columns)
    if photometric not in MONOCHROME + COLOUR or (photometric in MONOCHROME) != (samples == 1):
        raise InputError(f"is a DICOM with photometric interpretation {shown(photometric)[:40] or '(none)'} "
                         f"and {samples} sample(s) per pixel, which is not read (greyscale or RGB only)")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(f"is a DICOM with transfer syntax {shown(_syntax_name(syntax))[:120]}, "
                         "which is not an image encoding pydicom reads") from None
    if not decoder.is_available:
        missing = " ".join(decoder.missing_dependencies)
        if "pylibjpeg-libjpeg" in missing and importlib.util.find_spec("libjpeg") is None:
            raise InputError(f"is a DICOM with transfer syntax {_syntax_name(syntax)} that needs "
                             f"`pip install {JPEG_LOSSLESS_EXTRA}`")
        raise InputError(f"is a DICOM with transfer syntax {_syntax_name(syntax)} that this installation "
                         "cannot decode")
    return ds


def dicom_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a DICOM image from its header, with `read_header`'s refusals."""
    ds = read_header(data)
    return int(ds.Rows), int(ds.Columns)


def _voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float]:
    """The first VOI of `ds` applied to modality values, and the (low, high) output values that become
    0 and 255: the VOI LUT's own smallest and largest entries, or the window's output range (pydicom's,
    probed with -inf and +inf so it is exactly the range the window maps onto). Without a VOI: the
    values themselves and their min..max."""
    from pydicom.pixels import apply_voi, apply_windowing

    lut_items = ds.get("VOILUTSequence")
    if lut_items and lut_items[0].get("LUTDescriptor") is not None and lut_items[0].get("LUTData") is not None:
        entries, first = int(lut_items[0].LUTDescriptor[0]) or 2 ** 16, int(lut_items[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0)
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, 0)
        return mapped.astype(np.float64), float(table.min()), float(table.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds, 0)
        return apply_windowing(values.astype(np.float64), ds, 0), float(low), float(high)
    return values, float(values.min()), float(values.max())


def decode_dicom(data: bytes) -> PILImage:
    """The first frame of a DICOM image as 8-bit RGB, by the rule in the module docstring; anything
    wrong is an InputError reason."""
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, pixel_array

    from embedstore.images import shown, window_to_uint8

    ds = read_header(data)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    try:
        frame = pixel_array(ds, index=0)
    except Exception as error:  # noqa: BLE001 — a broken codestream raises anything
        raise _corrupt(error) from None
    if photometric in COLOUR:
        if frame.dtype == np.uint8:
            return Image.fromarray(np.ascontiguousarray(frame), "RGB")
        colour = frame.astype(np.float64)
        return Image.fromarray(window_to_uint8(colour, float(colour.min()), float(colour.max())), "RGB")
    try:
        values, low, high = _voi(apply_modality_lut(frame, ds), ds)
    except Exception as error:  # noqa: BLE001 — a window of width 0, a LUT of 9-bit entries, a non-number
        reason = shown(error).split(" - ")[0].strip()[:100]
        raise InputError(f"is a DICOM whose modality LUT, VOI LUT or window cannot be applied ({reason})") from None
    grey = window_to_uint8(values.astype(np.float64), low, high)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
