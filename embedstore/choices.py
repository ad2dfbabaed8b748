"""Every closed set of choices, declared once.

Registries are keyed by these enums, the CLI uses them as parameter types (so typer refuses a bad
value with the list of valid ones), and library code checks a value with `parse`, raising with the
value itself; the CLI names the option. Members are `StrEnum`s: `Protocol.STUDY == "study"`, so
stored strings and JSON stay plain text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from embedstore.errors import InputError


class Mode(StrEnum):
    """How a run scores images: zero-shot prompts, a linear probe, or a fine-tuned tower."""

    ZS = "zs"
    LP = "lp"
    FT = "ft"


class Protocol(StrEnum):
    """`study` reproduces the notebook exactly; `multilabel` is embedstore's corrected protocol."""

    STUDY = "study"
    MULTILABEL = "multilabel"


class ProtocolChoice(StrEnum):
    """`embedstore analyze --protocol`: one protocol or both."""

    STUDY = "study"
    MULTILABEL = "multilabel"
    BOTH = "both"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class CamMethod(StrEnum):
    """Saliency methods (pytorch-grad-cam classes)."""

    GRADCAM = "gradcam"
    GRADCAM_PLUS_PLUS = "gradcam++"
    HIRESCAM = "hirescam"
    SCORECAM = "scorecam"
    EIGENCAM = "eigencam"


class ChartKind(StrEnum):
    """`embedstore chart KIND`."""

    LABELS = "labels"
    SEPARABILITY = "separability"
    PROJECTION = "projection"
    METRICS = "metrics"
    PER_LABEL = "per-label"
    THRESHOLDS = "thresholds"
    NEIGHBORS = "neighbors"
    CALIBRATION = "calibration"
    COMPARISONS = "comparisons"
    DRIFT = "drift"
    GRADCAM = "gradcam"
    PROMPTS = "prompts"


class Reducer(StrEnum):
    """2-D projection of the embeddings."""

    PCA = "pca"
    UMAP = "umap"


class ColorBy(StrEnum):
    """What colours the points of the projection chart."""

    DOMAIN = "domain"
    LABEL = "label"
    ABNORMAL = "abnormal"


class PerLabelMetric(StrEnum):
    """The per-label figure the per-label heatmap draws."""

    F1 = "f1"
    AUROC = "auroc"
    AUPRC = "auprc"


class TableFormat(StrEnum):
    """Output of `analyze` and other table-printing commands."""

    TABLE = "table"
    MARKDOWN = "markdown"
    CSV = "csv"
    JSON = "json"


class SqlFormat(StrEnum):
    """Output of `embedstore sql`."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


class Resampling(StrEnum):
    """How bootstrap resamples are drawn: from the whole split, or within rarest-label strata."""

    SIMPLE = "simple"
    STRATIFIED = "stratified"


class SearchDevice(StrEnum):
    """Where neighbour search runs: `auto` uses a CUDA device when torch sees one (exact matrix product
    + top-k), else FAISS on the CPU (exact, or IVF with measured recall on large splits); `torch-cpu`
    runs the GPU path's code on the CPU (exact; for checking it where no GPU is)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TORCH_CPU = "torch-cpu"


class SplitMethod(StrEnum):
    """How ingest assigns train/val/test."""

    STUDY = "study"
    STRATIFIED = "stratified"
    GIVEN = "given"


class IngestFormat(StrEnum):
    """Dataset layouts ingest reads (`auto` detects one from the files)."""

    AUTO = "auto"
    IUXRAY14 = "iuxray14"
    KAGGLE = "kaggle"
    OPENI = "openi"
    CHEXPERT = "chexpert"
    MIMIC_CXR = "mimic-cxr"
    NIH14 = "nih14"
    VINDR_CXR = "vindr-cxr"
    MANIFEST = "manifest"


class UncertainPolicy(StrEnum):
    """What an uncertain (-1) label value becomes: negative (the study's rule), positive, or left out
    of that label's loss and metrics."""

    ZEROS = "zeros"
    ONES = "ones"
    IGNORE = "ignore"


class ReaderPolicy(StrEnum):
    """How several radiologists' labels of one image become one (VinDr-CXR): any reader, most
    readers, or all readers."""

    ANY = "any"
    MAJORITY = "majority"
    CONSENSUS = "consensus"


class AnnotationFormat(StrEnum):
    """`gradcam validate --annotations-format`: the layout of an expert-annotation file (auto: detected)."""

    AUTO = "auto"
    BOXES = "boxes"
    PNG_MASKS = "png-masks"
    NIH_BBOX = "nih-bbox"
    VINDR = "vindr"
    CHEXLOCALIZE = "chexlocalize"
    CHEXLOCALIZE_POLYGONS = "chexlocalize-polygons"
    MS_CXR = "ms-cxr"
    RSNA = "rsna"
    SIIM = "siim"
    COCO = "coco"


class SampleLayout(StrEnum):
    """`embedstore data sample --layout`: the dataset layout the synthetic benchmark is written in."""

    IUXRAY = "iuxray"
    CHEXPERT = "chexpert"
    MIMIC_CXR = "mimic-cxr"
    NIH14 = "nih14"
    VINDR_CXR = "vindr-cxr"


class PromptSet(StrEnum):
    """Zero-shot prompt styles (embedstore/prompts.py builds each)."""

    NAMES = "names"
    TEMPLATES = "templates"
    POSNEG = "posneg"
    CONSISTENT = "consistent"
    REPORT = "report"
    LAY = "lay"


class PromptChoice(StrEnum):
    """`embedstore extract --prompts`: one prompt style, or `all`: a sweep of one zs run per style."""

    NAMES = "names"
    TEMPLATES = "templates"
    POSNEG = "posneg"
    CONSISTENT = "consistent"
    REPORT = "report"
    LAY = "lay"
    ALL = "all"


class SampleDomain(StrEnum):
    """The synthetic benchmark's domains: the imbalanced, shifted target or the balanced source."""

    TARGET = "target"
    SOURCE = "source"


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


E = TypeVar("E", bound=StrEnum)


def parse(kind: type[E], value: str | E, what: str | None = None) -> E:
    """`value` as a member of `kind`, or an InputError naming the value and the valid choices (the
    CLI has checked its own options already; this guards calls from Python)."""
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise InputError(f"{what or kind.__name__.lower()} {value!r}: choose one of {valid}") from None
