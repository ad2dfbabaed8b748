"""Expert annotations in the layouts datasets publish them in, read into one `AnnotationSet`.

One module per format (`AnnotationFormat`), each a `FormatReader` in `READERS`; `detect_format`
recognises a file from its header or JSON shape, `read_annotations` reads one or more files (one
reader each, or the readers a file names) against the run's images and labels. docs/annotations.md
describes every format.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from embedstore.annotation_sets import (
    boxes,
    chexlocalize,
    chexlocalize_polygons,
    coco,
    ms_cxr,
    nih_bbox,
    png_masks,
    rsna,
    siim,
    vindr,
)
from embedstore.annotation_sets.base import (
    AnnotationSet,
    Box,
    FileMatcher,
    FileRead,
    FormatReader,
    LabelMatcher,
    Mask,
    Region,
    Source,
    folder_sha256,
)
from embedstore.choices import AnnotationFormat, parse
from embedstore.errors import InputError
from embedstore.images import shown

__all__ = ["READERS", "AnnotationSet", "Box", "FormatReader", "Mask", "Region", "detect_format", "read_annotations"]

#: Every format's reader, in the order formats are tried when detecting one.
READERS: dict[AnnotationFormat, FormatReader] = {module.READER.format: module.READER for module in (
    png_masks, boxes, nih_bbox, vindr, ms_cxr, rsna, siim, coco, chexlocalize_polygons, chexlocalize)}


def _formats() -> str:
    return "; ".join(f"{fmt.value}: {READERS[fmt].description}" for fmt in AnnotationFormat if fmt in READERS)


def _detect(source: Source) -> AnnotationFormat:
    if source.is_folder:
        return AnnotationFormat.PNG_MASKS
    kind = "json" if source.looks_like_json() else "csv"
    for reader in READERS.values():
        if reader.kind == kind and reader.sniff(source):
            return reader.format
    seen = "a JSON document of no known shape" if kind == "json" else f"header {','.join(source.header()[:10])!r}"
    raise InputError(f"annotations {shown(source.path)}: not a known annotation format ({shown(seen)}); "
                     f"formats: {_formats()}", parameter="annotations")


def detect_format(path: Path) -> AnnotationFormat:
    """The format of an annotation file or folder: a folder is png-masks, a JSON document is told by
    its shape, a CSV (also `.csv.gz`, a one-CSV `.zip`) by its header."""
    return _detect(Source(Path(path)))


def read_annotations(paths: Sequence[Path], known_files: Collection[str] | None, known_labels: Sequence[str] | None,
                     fmt: AnnotationFormat = AnnotationFormat.AUTO, masks: Path | None = None) -> AnnotationSet:
    """Every region of the files (each its format, detected unless `fmt` is given), matched to the
    dataset's `known_files` and the run's `known_labels` (None: keep the files' own names).

    Several files are several readers: a file's reader is its name (`parent/name` where two files
    share one) unless it names its readers itself (VinDr rad_id, kept as is across files).
    `masks` (boxes only): each row's region is its mask file in that folder."""
    if isinstance(paths, str | os.PathLike):
        paths = [Path(paths)]
    given = tuple(Path(p) for p in paths)
    if not given:
        raise InputError("annotations: no file given", parameter="annotations")
    fmt = parse(AnnotationFormat, fmt, "annotations format")
    twice = [p for p, n in Counter(given).items() if n > 1]
    if twice:
        raise InputError(f"annotations {shown(twice[0])}: given twice", parameter="annotations")
    names = Counter(p.name for p in given)
    images, labels = FileMatcher(known_files), LabelMatcher(known_labels)
    files: list[FileRead] = []
    for path in given:
        source = Source(path)
        actual = _detect(source) if fmt == AnnotationFormat.AUTO else fmt
        if masks is not None and actual != AnnotationFormat.BOXES:
            raise InputError(f"masks {shown(masks)}: a masks folder goes with a boxes file; annotations {shown(path)} "
                             f"is {actual.value}", parameter="masks")
        reader = f"{path.parent.name}/{path.name}" if names[path.name] > 1 else path.name
        out = FileRead(path, actual, reader, images, labels, masks)
        READERS[actual].read(source, out)
        out.finish()
        out.sha256[str(path)] = folder_sha256(path) if path.is_dir() else _file_sha256(path)
        if masks is not None:
            out.sha256[str(masks)] = folder_sha256(masks)
        files.append(out)
    return _merge(given, files)


def _file_sha256(path: Path) -> str:
    from embedstore.atomic import sha256_file

    return sha256_file(path)


def _merge(paths: tuple[Path, ...], files: list[FileRead]) -> AnnotationSet:
    """One set of several files' regions. Reader ids a file names itself (VinDr's rad_id) are kept as
    they are, so one radiologist is one reader across the train and test files of a release; a file
    without reader ids is one reader, named by the file."""
    regions = []
    readers: dict[str, set[str]] = {}
    left_out: Counter[str] = Counter()
    sha256: dict[str, str] = {}

    for out in files:
        regions += out.regions
        for filename, names in out.readers.items():
            readers.setdefault(filename, set()).update(names)
        left_out.update(out.left_out)
        sha256.update(out.sha256)
    return AnnotationSet(paths, files[0].format, regions, {f: tuple(sorted(r)) for f, r in sorted(readers.items())},
                         dict(left_out), sha256)
