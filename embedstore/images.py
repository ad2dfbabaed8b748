"""Decoded, resized image tensors: a cache keyed by image sha256 and preprocessing, and batched loading.

The model's pixel pipeline (resize, crop, to RGB, to tensor) runs once per image and preprocessing;
its output is exactly k/255 per pixel, so it is stored losslessly as uint8 and normalised per batch
(on the GPU when there is one). Worker processes decode in parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.atomic import save_npy
from embedstore.errors import InputError

log = logging.getLogger(__name__)


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


def decode(item: ImageItem, pixel_transform: Callable[[Any], Any]) -> np.ndarray:
    """Read and preprocess one image to uint8 CHW; a vanished or broken file names itself."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item.path) as image:
            tensor = pixel_transform(image.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise InputError(f"image {item.path} (sample {item.sample_id}) cannot be read: {error}") from None
    return (tensor.numpy() * 255.0).round().astype(np.uint8)


class CachedImages:
    """A torch Dataset of (sample_id, uint8 tensor), filling the tensor cache as it goes."""

    def __init__(self, items: Sequence[ImageItem], cache: TensorCache, pixel_transform: Callable[[Any], Any]) -> None:
        self.items = list(items)
        self.cache = cache
        self.pixel_transform = pixel_transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        import torch

        item = self.items[index]
        array = self.cache.get(item.sha256)
        if array is None:
            array = decode(item, self.pixel_transform)
            self.cache.put(item.sha256, array)
        return item.sample_id, torch.from_numpy(array)


def batches(dataset: CachedImages, batch_size: int, workers: int, shuffle: bool = False,
            seed: int = 0) -> Iterator[tuple[Any, Any]]:
    """(sample_ids, uint8 images) batches from a DataLoader with `workers` decoding processes."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                        generator=generator, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False)
    yield from loader


def normalize(images: Any, mean: Sequence[float], std: Sequence[float], device: Any, dtype: Any = None) -> Any:
    """uint8 NCHW → normalised float on `device` (channels-last on CUDA)."""
    import torch

    x = images.to(device, non_blocking=True).float().div_(255.0)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype) if dtype is not None else x
