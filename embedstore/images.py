"""The one image decoder, decoded and resized image tensors (a cache keyed by image sha256 and
preprocessing), and batched loading.

Every path that reads a dataset image (ingest validation, the extraction DataLoader and its tensor
cache, Grad-CAM) goes through `read_image_bytes` and `decode_rgb`: only regular files are opened,
at most MAX_IMAGE_BYTES are read, images over MAX_IMAGE_PIXELS are refused before they are
decoded, and every mode becomes 8-bit RGB the same way (`to_rgb8`; DICOM by `embedstore.dicom`'s
display rule; DECODER_KEY names both inside each model's preprocessing key).

A JPEG is decoded straight to about the model's input size (`decode_rgb(data, min_side)`: libjpeg's
DCT-domain scaling by 1/2, 1/4 or 1/8, keeping both sides >= JPEG_DRAFT_MARGIN × the model's Resize
target), so a 2,500 × 3,000 film is never decoded to 7.5 MP only to be resized to 224; the model's own
Resize does the final resampling.

The model's pixel pipeline (resize, crop, to tensor) runs once per image and preprocessing; its
output is exactly k/255 per pixel, so it is stored losslessly as uint8 and normalised per batch
(on the GPU when there is one). Worker processes decode in parallel.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedstore.atomic import save_npy
from embedstore.choices import Protocol
from embedstore.errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage

log = logging.getLogger(__name__)

#: Largest image decoded, in pixels (width × height). A chest film is at most about 4,300 × 4,300
#: (18.5 MP); anything larger is refused from its header, before a byte of pixels is decoded
#: (a 20,000 × 20,000 1-bit PNG is a few kilobytes on disk and 400 MP in memory).
MAX_IMAGE_PIXELS = 50_000_000
#: Largest image file read, in bytes (a 16-bit 50 MP image stored raw is 100 MB).
MAX_IMAGE_BYTES = 256 * 1024 * 1024
#: How images become 8-bit RGB (`to_rgb8`). It is part of every model's preprocessing key, so of run
#: identity and of the tensor cache's folders: change it whenever decoding changes what a model sees.
DECODER_KEY = "rgb8;high-bit-depth=min-max;dicom=modality+voi+mono1;jpeg-draft=2x;v2"
#: A JPEG is drafted to at least this many times the model's Resize target, so the model's antialiasing
#: Resize still reduces by 2× or more. At 1× (draft to the target itself) a 2,500 × 3,000 film reaches
#: a 224 px tensor up to 22/255 away from a full decode (mean 1.2/255: libjpeg's 1/8 scale is an 8 × 8
#: block mean, a cruder low-pass, and 2,500 is no multiple of 8); at 2× at most 2/255 (mean 0.18/255),
#: for about a third more decoding time (bench/extraction.py, "large JPEG").
JPEG_DRAFT_MARGIN = 2
#: The file formats read (Pillow's names). Pillow opens some forty more (EPS runs Ghostscript; old
#: decoders such as FLI, PCX, SGI, TGA have had memory-safety bugs): none is a radiograph format.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "JPEG2000", "PPM")
#: Pillow modes with more than 8 bits per sample: windowed to 8 bits by `to_rgb8`.
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
#: The reason `read_image_bytes` gives for a missing file (callers add where they looked).
NOT_FOUND = "not found"

_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def shown(text: object) -> str:
    """`text` with control and other unprintable characters escaped (`\\x00`, `\\n`, `\\x1b`): a path
    read from a CSV may hold anything, and it is printed on a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _not_regular(mode: int) -> InputError:
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
    return InputError(f"is {kind}, not a regular file")


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of one image file: `read_regular_bytes` at most MAX_IMAGE_BYTES."""
    return read_regular_bytes(path, MAX_IMAGE_BYTES)


def read_regular_bytes(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of one input file, refusing anything but a regular file of at most `limit` bytes.

    A FIFO would block, a device such as /dev/zero never ends, a directory is no image: the path is
    stat'ed and refused before it is opened, opened non-blocking, and checked again on the open file
    (it may have been swapped in between). Raises InputError whose message is the reason alone
    ("not found", "is a FIFO, not a regular file", …), for the caller to prefix with the image.
    """
    name = os.fspath(path)
    if "\x00" in name:
        raise InputError("has a NUL byte in its path")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        mode = os.stat(name).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode)
        with open(os.open(name, flags), "rb", closefd=True) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _not_regular(info.st_mode)
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(NOT_FOUND) from None
    except OSError as error:
        raise InputError(f"is unreadable ({error.strerror or error})") from None
    if len(data) > limit:
        raise InputError(f"is larger than the limit of {limit:,} bytes")
    if not data:
        raise InputError("is empty (0 bytes)")
    return data


def too_large(pixels: int | None) -> InputError:
    """The refusal of an image of `pixels` pixels (None: Pillow's own limit was hit first)."""
    count = f"{pixels:,} pixels" if pixels is not None else "more pixels than Pillow allows"
    return InputError(f"is too large: {count}, over the limit of {MAX_IMAGE_PIXELS:,}")


def _open(data: bytes) -> PILImage:
    """Pillow's lazy image over `data`, its size checked against MAX_IMAGE_PIXELS from the header.

    Pillow's own decompression-bomb warning (over its limit of about 89 MP) is made an error here,
    in every process and thread that decodes, so it is never printed: it is one more bad image.
    """
    from PIL import Image, UnidentifiedImageError

    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise too_large(int(found.group(1)) if found else None) from None
    except UnidentifiedImageError:
        raise InputError(f"is truncated or not an image (not a {', '.join(IMAGE_FORMATS[:-1])} or "
                         f"{IMAGE_FORMATS[-1]} file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"is truncated or not an image ({shown(error)[:80]})") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise too_large(image.width * image.height)
    return image


def to_rgb8(image: PILImage) -> PILImage:
    """8-bit RGB, as the model's transforms expect.

    8-bit images are used as stored: a palette through its palette, alpha dropped (not composited),
    CMYK/YCbCr/HSV converted, grey repeated in R, G and B. High-bit-depth images (16-bit PNG, 32-bit
    integer or float TIFF) are windowed to their own value range, min..max → 0..255, as a viewer
    shows an image with no stored window: a 12-bit film in a 16-bit PNG keeps its contrast instead of
    going near-black (scaling by the container's depth, >> 8) or white (Pillow's convert clips at
    255). Full-range 16-bit data comes out as value / 257, the same as >> 8 up to rounding.
    Non-finite floats: NaN and -inf → 0, +inf → 255; a uniform image → black.
    """
    from PIL import Image

    if image.mode == "La":  # premultiplied alpha: Pillow converts it to RGB only through LA
        image = image.convert("LA")
    if image.mode not in HIGH_BIT_DEPTH_MODES:
        return image.convert("RGB")
    precision = np.float64 if image.mode == "I" else np.float32  # float32 is exact for 16 bits, not for 32
    values: np.ndarray[Any, Any] = np.asarray(image, dtype=precision)
    finite = np.isfinite(values) if image.mode == "F" else None  # integers are always finite
    present = values[finite] if finite is not None and not finite.all() else values
    low, high = (float(present.min()), float(present.max())) if present.size else (0.0, 0.0)
    return Image.fromarray(window_to_uint8(values, low, high)).convert("RGB")


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` with `low` → 0 and `high` → 255, linearly, rounded to the nearest integer and clipped
    (`high` < `low` maps inverted). NaN and -inf → 0, +inf → 255; `low` == `high` → black (+inf white).
    The one rule by which high-bit-depth images and DICOM become 8-bit."""
    scale = 255.0 / (high - low) if high != low else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.nan_to_num((values - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    if scale == 0.0:
        scaled = np.where(values == np.inf, 255.0, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_rgb(data: bytes, min_side: int | None = None) -> PILImage:
    """Decode image bytes fully to 8-bit RGB (`to_rgb8`, DICOM by `embedstore.dicom.decode_dicom`);
    anything wrong is an InputError reason.

    `min_side`: the size the caller resizes to next (the model's Resize target). A JPEG is then
    decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's `draft`), the largest reduction that keeps
    both sides >= JPEG_DRAFT_MARGIN × min_side: every block is still entropy-decoded, only the
    inverse DCT is smaller. Other formats ignore it.
    """
    from embedstore import dicom

    if dicom.is_dicom(data):
        return dicom.decode_dicom(data)
    image = _open(data)
    try:
        with image:
            if min_side and min_side > 0 and image.format == "JPEG":
                target = min_side * JPEG_DRAFT_MARGIN
                image.draft(image.mode, (target, target))
            image.load()
            return to_rgb8(image)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        raise InputError(f"is truncated or not an image ({shown(error)[:80]})") from None


def load_rgb(path: str | os.PathLike[str], min_side: int | None = None) -> tuple[PILImage, bytes]:
    """One image file as 8-bit RGB (`decode_rgb`, JPEG drafted to `min_side`), and its bytes (for hashing)."""
    data = read_image_bytes(path)
    return decode_rgb(data, min_side), data


def verify_image(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file, once all its data has been decoded with every refusal of `load_rgb`
    (regular file, byte and pixel limits, truncation, corruption), as cheaply as that allows: a JPEG
    at its smallest draft (1/8 scale: every block is still entropy-decoded, so a truncated or corrupt
    file is caught, in about 40 % of a full decode's time for a 2,500 × 3,000 film)."""
    data = read_image_bytes(path)
    decode_rgb(data, min_side=1).close()
    return data


def hash_verified(paths: Sequence[str]) -> list[tuple[str, str | None]]:
    """For each path: (sha256 of its bytes, None) once `verify_image` accepts it, else ("", the
    reason). Module-level and picklable, so that ingest can run it in worker processes."""
    import hashlib

    results: list[tuple[str, str | None]] = []
    for path in paths:
        try:
            results.append((hashlib.sha256(verify_image(path)).hexdigest(), None))
        except InputError as error:
            results.append(("", str(error)))
    return results


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image file, from its header, with the same refusals as the decoder."""
    from embedstore import dicom

    data = read_image_bytes(path)
    if dicom.is_dicom(data):
        return dicom.dicom_size(data)
    with _open(data) as image:
        return image.height, image.width


def resize_target(pixel_transform: object) -> int | None:
    """The side a model's pixel pipeline first resizes to, when its first step is a torchvision Resize
    (an int: the shorter side; (h, w): the larger of the two, so both sides are at least covered);
    None otherwise (no Resize first: the image is decoded at full size)."""
    from torchvision import transforms

    steps = getattr(pixel_transform, "transforms", [pixel_transform])
    first = steps[0] if steps else None
    if not isinstance(first, transforms.Resize):
        return None
    size = first.size
    sides = [int(size)] if isinstance(size, int) else [int(side) for side in size]
    return max(sides) if sides else None


@dataclass(frozen=True)
class ImageItem:
    sample_id: int
    path: str
    sha256: str


class TensorCache:
    """uint8 CHW arrays under `<cache>/tensors/<preprocess key>/<sha[:2]>/<sha>.npy`."""

    def __init__(self, root: Path, preprocess_key: str) -> None:
        self.folder = root / "tensors" / preprocess_key

    def _path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str) -> np.ndarray | None:
        path = self._path(sha256)
        try:
            return np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def put(self, sha256: str, array: np.ndarray) -> None:
        save_npy(self._path(sha256), array)


def decode(item: ImageItem, pixel_transform: Callable[[PILImage], torch.Tensor]) -> np.ndarray:
    """Read and preprocess one image to uint8 CHW (a JPEG drafted to the transform's Resize target);
    a vanished or broken file names itself."""
    try:
        image, _ = load_rgb(item.path, resize_target(pixel_transform))
    except InputError as error:
        raise InputError(f"image {shown(item.path)} (sample {item.sample_id}) {error}") from None
    tensor = pixel_transform(image)
    return (tensor.numpy() * 255.0).round().astype(np.uint8)


class CachedImages:
    """A torch Dataset of (sample_id, uint8 tensor), filling the tensor cache as it goes."""

    def __init__(self, items: Sequence[ImageItem], cache: TensorCache,
                 pixel_transform: Callable[[PILImage], torch.Tensor]) -> None:
        self.items = list(items)
        self.cache = cache
        self.pixel_transform = pixel_transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        import torch

        item = self.items[index]
        array = self.cache.get(item.sha256)
        if array is None:
            array = decode(item, self.pixel_transform)
            self.cache.put(item.sha256, array)
        return item.sample_id, torch.from_numpy(array)


@dataclass(frozen=True)
class _Failed:
    """An image a DataLoader worker could not decode: the error travels as data, not as an exception
    (torch re-raises a worker's exception with its whole traceback as the message)."""

    message: str
    details: tuple[str, ...]


class _Guarded:
    """`dataset`, with an InputError from one item turned into a _Failed item."""

    def __init__(self, dataset: CachedImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except InputError as error:
            return _Failed(str(error), tuple(error.details))


def _collate(items: list[Any]) -> Any:
    from torch.utils.data import default_collate

    failed = next((item for item in items if isinstance(item, _Failed)), None)
    return failed if failed is not None else default_collate(items)


def batches(dataset: CachedImages, batch_size: int, workers: int, shuffle: bool = False,
            seed: int = 0, batch_sampler: Sequence[Sequence[int]] | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(sample_ids, uint8 images) batches from a DataLoader with `workers` decoding processes: of
    `batch_size` (shuffled with `seed`), or exactly the index lists of `batch_sampler` (one rank's
    shares of a torchrun job's global batches).

    An image that cannot be decoded raises the decoder's one-line InputError here, in the caller's
    process, whichever worker met it."""
    import torch
    from torch.utils.data import DataLoader

    loader: Any
    if batch_sampler is not None:
        loader = DataLoader(_Guarded(dataset), batch_sampler=batch_sampler,  # type: ignore[arg-type]
                            num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=_collate)
    else:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        loader = DataLoader(_Guarded(dataset), batch_size=batch_size, shuffle=shuffle,  # type: ignore[arg-type]
                            num_workers=workers, generator=generator, pin_memory=torch.cuda.is_available(),
                            persistent_workers=False, collate_fn=_collate)
    for batch in loader:
        if isinstance(batch, _Failed):
            raise InputError(batch.message, details=list(batch.details))
        yield batch


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 NCHW → normalised float on `device` (channels-last on CUDA)."""
    import torch

    x = images.to(device, non_blocking=True).float().div_(255.0)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype) if dtype is not None else x


#: Autocast precision per (step, protocol, device type); a combination not listed runs in fp32 (no
#: autocast). The study protocol encodes (and validates ft) in fp32 as its notebook does, and trains
#: ft under fp16 autocast with a GradScaler on CUDA; multilabel uses bf16 autocast on CUDA.
PRECISIONS: dict[tuple[str, Protocol, str], str] = {
    ("encode", Protocol.MULTILABEL, "cuda"): "bf16",
    ("ft-train", Protocol.STUDY, "cuda"): "fp16",
    ("ft-train", Protocol.MULTILABEL, "cuda"): "bf16",
}
#: torch's name of each precision's autocast dtype (fp32: no autocast).
AUTOCAST_DTYPES: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def encode_precision(protocol: str, device_type: str) -> str:
    """How a run encodes images: "fp32" or "bf16" (recorded in the run's config)."""
    return PRECISIONS.get(("encode", Protocol(protocol), device_type), "fp32")


def ft_train_precision(protocol: str, device_type: str) -> str:
    """The autocast precision of ft's training steps: "fp32", "fp16" or "bf16"."""
    return PRECISIONS.get(("ft-train", Protocol(protocol), device_type), "fp32")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch dtype to autocast to for a precision name, or None for fp32."""
    import torch

    name = AUTOCAST_DTYPES[precision]
    return getattr(torch, name) if name is not None else None


def encode_autocast(device: torch.device, protocol: str = "multilabel") -> torch.dtype | None:
    """The autocast dtype for encoding under `protocol` on `device` (None: fp32, no autocast)."""
    return autocast_dtype(encode_precision(protocol, device.type))


def prepare_encoder(visual: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The image tower ready to encode on `device`: eval mode, channels-last weights on CUDA
    (to match the channels-last batches `normalize` makes there)."""
    import torch

    visual = visual.to(device).eval()
    if device.type == "cuda":
        visual = visual.to(memory_format=torch.channels_last)
    return visual


def encode_batch(visual: torch.nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Features (float32, on `device`) of one uint8 NCHW batch: normalised on `device`, encoded
    without gradients, under autocast to `autocast_dtype` when one is given.

    Kept free of store imports so benchmarks can time exactly the code `extract` runs."""
    import contextlib

    import torch

    x = normalize(images, mean, std, device)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        features = visual(x)
    return features.float()
