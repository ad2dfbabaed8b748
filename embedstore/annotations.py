"""Expert annotations (boxes or masks, in original image pixels) brought onto the model's input.

The readers of every annotation format live in `embedstore.annotation_sets`; here is the geometry
they share: an annotation is mapped through the model's own preprocessing — resize of the shortest
side, then centre crop (torchvision's rules) — so it lands on the pixels the model actually saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstore.errors import InputError


@dataclass(frozen=True)
class InputGeometry:
    """Original (height, width) → model input: resize to (resized_h, resized_w), crop at (top, left)
    a (crop_h, crop_w) window."""

    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int
    crop: tuple[int, int]

    @classmethod
    def from_transform(cls, pixel_transform: object, original: tuple[int, int]) -> InputGeometry:
        """Follow the Resize / CenterCrop steps of a torchvision Compose for an image of `original` size."""
        from torchvision import transforms

        height, width = original
        top = left = 0
        crop = (height, width)
        for step in getattr(pixel_transform, "transforms", [pixel_transform]):
            if isinstance(step, transforms.Resize):
                height, width = _resized(step.size, (height, width), step.max_size)
                crop = (height, width)
            elif isinstance(step, transforms.CenterCrop):
                crop_h, crop_w = size_pair(step.size)
                top += int(round((height - crop_h) / 2.0))
                left += int(round((width - crop_w) / 2.0))
                crop = (crop_h, crop_w)
            elif type(step).__name__ in {"ResizeKeepRatio", "RandomResizedCrop", "ResizeMaxSize"}:
                raise InputError(f"the model's preprocessing uses {type(step).__name__}; embedstore maps "
                                 "annotations only through Resize and CenterCrop")
        return cls(original, (height, width), top, left, crop)

    @property
    def scale(self) -> tuple[float, float]:
        return self.resized[0] / self.original[0], self.resized[1] / self.original[1]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """A box in original pixels (edges; x1, y1 exclusive) → input pixels, clipped to the crop."""
        sy, sx = self.scale
        return (float(np.clip(x0 * sx - self.left, 0, self.crop[1])), float(np.clip(y0 * sy - self.top, 0, self.crop[0])),
                float(np.clip(x1 * sx - self.left, 0, self.crop[1])), float(np.clip(y1 * sy - self.top, 0, self.crop[0])))

    def box_mask(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Input pixels whose centre lies inside the mapped box."""
        bx0, by0, bx1, by1 = self.box(x0, y0, x1, y1)
        ys = np.arange(self.crop[0]) + 0.5
        xs = np.arange(self.crop[1]) + 0.5
        return ((ys >= by0) & (ys < by1))[:, None] & ((xs >= bx0) & (xs < bx1))[None, :]

    def mask(self, original_mask: np.ndarray) -> np.ndarray:
        """A mask in original pixels → input pixels (bilinear resize, then half-threshold, then crop)."""
        from PIL import Image

        image = Image.fromarray((original_mask > 0).astype(np.uint8) * 255)
        resized = np.asarray(image.resize((self.resized[1], self.resized[0]), Image.Resampling.BILINEAR)) >= 128
        return _window(resized, self.top, self.left, self.crop)


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from torchvision/timm size values: an int, or a sequence of one or two."""
    if isinstance(size, int):
        return size, size
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


def _resized(size: int | Sequence[int], original: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """torchvision's output size: an int resizes the shorter side (the longer one truncated)."""
    height, width = original
    if not isinstance(size, int) and len(size) == 2:
        return int(size[0]), int(size[1])
    target = size if isinstance(size, int) else int(size[0])
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = target, int(target * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _window(array: np.ndarray, top: int, left: int, crop: tuple[int, int]) -> np.ndarray:
    """array[top:top+h, left:left+w], zero-padded where the window leaves the array (CenterCrop pads)."""
    out = np.zeros(crop, dtype=array.dtype)
    src_y0, src_x0 = max(top, 0), max(left, 0)
    src_y1, src_x1 = min(top + crop[0], array.shape[0]), min(left + crop[1], array.shape[1])
    if src_y1 > src_y0 and src_x1 > src_x0:
        out[src_y0 - top:src_y1 - top, src_x0 - left:src_x1 - left] = array[src_y0:src_y1, src_x0:src_x1]
    return out


def mask_name(filename: str, label: str) -> str:
    """The mask file of (image, label): `<stem>__<label_lower_with_underscores>.png`."""
    stem = filename.removesuffix(".dcm.png")
    stem = stem if stem != filename else Path(filename).stem
    return f"{stem}__{label.lower().replace(' ', '_')}.png"
