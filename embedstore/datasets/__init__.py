"""Dataset layouts ingest reads, one module each, found through one registry.

Each layout names the function that reads it (`load(path, config) -> Loaded`) and the one that
recognises it from its files (`detect(path) -> bool`); `auto` tries the detectors in the order of
LAYOUTS and takes the first that answers yes. Modules are imported only when their layout is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedstore.choices import IngestFormat
from embedstore.datasets.base import IngestConfig, Loaded
from embedstore.errors import InputError


@dataclass(frozen=True)
class Layout:
    """Where a layout's reader and detector live (`module:function`)."""

    loader: str
    detector: str
    #: what `auto` looks for, for the message when nothing is recognised
    looks_for: str

    def load(self, path: Path, config: IngestConfig) -> Loaded:
        loaded: Loaded = _function(self.loader)(path, config)
        return loaded

    def detect(self, path: Path) -> bool:
        return bool(_function(self.detector)(path))


def _function(spec: str) -> Callable[..., Any]:
    module, name = spec.split(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


#: Every layout, in the order `auto` tries them: a file given by path is the study's CSV or else a
#: manifest; a folder is recognised by the files each dataset ships.
LAYOUTS: dict[IngestFormat, Layout] = {
    IngestFormat.IUXRAY14: Layout("embedstore.datasets.iuxray:load_iuxray14", "embedstore.datasets.iuxray:detect_iuxray14",
                                  "iuxray_frontal_14labels.csv"),
    IngestFormat.MANIFEST: Layout("embedstore.datasets.manifest:load_manifest",
                                  "embedstore.datasets.manifest:detect_manifest", "a .csv/.parquet manifest"),
    IngestFormat.KAGGLE: Layout("embedstore.datasets.iuxray:load_kaggle", "embedstore.datasets.iuxray:detect_kaggle",
                                "indiana_reports.csv + indiana_projections.csv"),
    IngestFormat.OPENI: Layout("embedstore.datasets.openi:load", "embedstore.datasets.openi:detect",
                               "ecgen-radiology/*.xml or NLMCXR_reports.tgz"),
    IngestFormat.CHEXPERT: Layout("embedstore.datasets.chexpert:load", "embedstore.datasets.chexpert:detect",
                                  "train.csv + valid.csv with a Path column"),
    IngestFormat.MIMIC_CXR: Layout("embedstore.datasets.mimic:load", "embedstore.datasets.mimic:detect",
                                   "mimic-cxr-2.0.0-metadata.csv(.gz)"),
    IngestFormat.NIH14: Layout("embedstore.datasets.nih14:load", "embedstore.datasets.nih14:detect",
                               "Data_Entry_2017*.csv"),
    IngestFormat.VINDR_CXR: Layout("embedstore.datasets.vindr:load", "embedstore.datasets.vindr:detect",
                                   "image_labels_train.csv"),
}


def detect(path: Path) -> IngestFormat:
    """The layout of `path` (a folder, or a file in it), or an InputError listing what was looked for."""
    for fmt, layout in LAYOUTS.items():
        if layout.detect(path):
            return fmt
    looked = "; ".join(f"{fmt}: {layout.looks_for}" for fmt, layout in LAYOUTS.items())
    raise InputError(f"{path}: cannot tell the format (looked for {looked}); name it", parameter="format")


def load(fmt: IngestFormat, path: Path, config: IngestConfig) -> Loaded:
    return LAYOUTS[fmt].load(path, config)
