"""`png-masks`: a folder of PNG masks named `<image stem>__<label_lower_with_underscores>.png`
(`embedstore.annotations.mask_name`), every one a region; nonzero pixels are inside. Also the mask
decoder the boxes format uses with a masks folder."""

from __future__ import annotations

import os
import stat
from functools import partial
from pathlib import Path

import numpy as np

from embedstore.annotation_sets.base import (
    LABEL_AMBIGUOUS,
    LABEL_MISSING,
    FileRead,
    FormatReader,
    Mask,
    Region,
    Source,
    reading,
)
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import _not_regular, shown


def _decode(path: Path, prefix: str, parameter: str, original: tuple[int, int]) -> np.ndarray:
    """The mask file, through the images' own reader (regular files only, size and pixel limits),
    refused unless it is exactly its image's size."""
    from embedstore.images import load_rgb

    try:
        image, _ = load_rgb(path)
    except InputError as error:
        raise InputError(f"{prefix} {shown(path)}: {error}", parameter=parameter) from None
    pixels = np.asarray(image.convert("L"))
    if pixels.shape != tuple(original):
        raise InputError(f"{prefix} {shown(path)}: {pixels.shape[1]}×{pixels.shape[0]} pixels, but its image is "
                         f"{original[1]}×{original[0]}", parameter=parameter)
    return pixels > 0


def png_mask(path: Path, prefix: str = "masks", parameter: str = "masks") -> Mask:
    """A PNG mask file as a region shape, decoded when used; messages start `{prefix} {path}`."""
    return Mask(partial(_decode, path, prefix, parameter))


def _slug(label: str) -> str:
    return label.lower().replace(" ", "_")


def sniff(source: Source) -> bool:
    return source.is_folder


def read(source: Source, out: FileRead) -> None:
    folder = source.path
    if not folder.is_dir():
        raise InputError(f"annotations {shown(folder)}: not a folder (png-masks is a folder of "
                         "<image stem>__<label>.png files)", parameter="annotations")
    slugs: dict[str, str | None] = {}
    for name in out.labels.known or ():
        slugs[_slug(name)] = None if _slug(name) in slugs else name
    with reading(folder):
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if not entry.name.lower().endswith(".png"):
            continue
        path = folder / entry.name
        where = str(path)
        stem = entry.name[:-4]
        image_key, _, label_slug = stem.rpartition("__")
        if not image_key or not label_slug:
            out.bad(where, "not named <image stem>__<label_lower_with_underscores>.png")
            continue
        mode = entry.stat().st_mode
        if not stat.S_ISREG(mode):
            out.bad(where, str(_not_regular(mode)))
            continue
        filename = out.image(image_key)
        if filename is None:
            continue
        reader = out.read_by(filename)
        label = label_slug if out.labels.known is None else slugs.get(label_slug.lower())
        if label is None:
            out.left_out[LABEL_AMBIGUOUS if label_slug.lower() in slugs else LABEL_MISSING] += 1
            continue
        out.regions.append(Region(filename, label, where, reader, png_mask(path, "annotations", "annotations")))


READER = FormatReader(AnnotationFormat.PNG_MASKS, "folder", sniff, read,
                      "a folder of <image stem>__<label>.png masks")
