"""`siim`: the SIIM-ACR Pneumothorax challenge's `train-rle.csv`: `ImageId, EncodedPixels`, the
code `-1` (no pneumothorax) or the challenge's relative run-length code: (offset, length) pairs,
each offset counted from the end of the previous run, over the image's pixels in column-major
order. Several rows of one image are several regions. The image size is not in the file: a mask is
decoded on its image's size. One reader."""

from __future__ import annotations

from functools import partial

import numpy as np

from embedstore.annotation_sets.base import FileRead, FormatReader, Mask, Source, cell, header_names
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import MAX_IMAGE_PIXELS, shown

REQUIRED = ("ImageId", "EncodedPixels")
LABEL = "Pneumothorax"
NO_MASK = "no mask (-1)"


def decode_relative(runs: np.ndarray, where: str, original: tuple[int, int]) -> np.ndarray:
    """The challenge's relative code on an image of `original` (height, width): a bool mask."""
    height, width = original
    offsets, lengths = runs[0::2], runs[1::2]
    total = height * width
    # Values are at most MAX_IMAGE_PIXELS each (checked when read), so these int64 sums cannot overflow.
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if len(ends) and ends[-1] > total:
        raise InputError(f"{shown(where)}: the run-length code ends at pixel {int(ends[-1]):,}, past the "
                         f"{total:,} pixels of its {width}×{height} image", parameter="annotations")
    steps = np.zeros(total + 1, dtype=np.int32)
    np.add.at(steps, starts, 1)
    np.add.at(steps, ends, -1)
    return (np.cumsum(steps[:total]) > 0).reshape(width, height).T


def sniff(source: Source) -> bool:
    return {"imageid", "encodedpixels"} <= header_names(source)


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    columns = table.columns(REQUIRED)
    for row, fields in table.rows:
        where = out.where(row)
        code = cell(fields, columns["EncodedPixels"]).strip()
        if not out.filled(where, ImageId=cell(fields, columns["ImageId"])):
            continue
        runs = None
        if code != "-1":
            try:
                values = [int(v) for v in code.split()]
            except ValueError:
                out.bad(where, "EncodedPixels must be -1 or whole numbers")
                continue
            if any(v > MAX_IMAGE_PIXELS for v in values) or sum(values) > MAX_IMAGE_PIXELS:
                out.bad(where, f"EncodedPixels run past {MAX_IMAGE_PIXELS:,} pixels, more than any image has")
                continue
            runs = np.array(values, dtype=np.int64)
            if len(runs) == 0 or len(runs) % 2 or (runs < 0).any() or (runs[1::2] == 0).any():
                out.bad(where, "EncodedPixels must be (offset, length) pairs, offsets ≥ 0, lengths ≥ 1")
                continue
        shape = None if runs is None else Mask(partial(decode_relative, runs, where))
        out.add_image(cell(fields, columns["ImageId"]).strip(), [(LABEL, where, shape)], NO_MASK)


READER = FormatReader(AnnotationFormat.SIIM, "csv", sniff, read, "SIIM-ACR Pneumothorax train-rle.csv")
