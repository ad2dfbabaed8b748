"""Zero-shot prompt sets and how each protocol turns image and text embeddings into scores.

Six built-in styles (`PromptSet`): the study's bare names, a template ensemble, CheXzero-style
positive/negative pairs, "findings consistent with …", report-style sentences, and lay-language
phrases (`prompt_sets/lay.json`; a label without an entry is prompted with its name). A custom style
comes from a YAML or CSV file (`read_prompt_file`): label → positive prompts, optional negatives.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.choices import PromptSet, Protocol, parse
from embedstore.errors import InputError
from embedstore.heads import Head

TEMPLATES = (
    "{label}",
    "{label}.",
    "a chest x-ray showing {label}",
    "findings consistent with {label}",
    "{label} is present",
)


@dataclass(frozen=True)
class Prompt:
    label: str
    text: str
    positive: bool


def _names(label: str) -> list[Prompt]:
    return [Prompt(label, label, True)]


def _templates(label: str) -> list[Prompt]:
    return [Prompt(label, template.format(label=label.lower() if i > 1 else label), True)
            for i, template in enumerate(TEMPLATES)]


def _posneg(label: str) -> list[Prompt]:
    return [Prompt(label, label, True), Prompt(label, f"no {label.lower()}", False)]


#: The `consistent` style's one prompt per label.
CONSISTENT_TEMPLATE = "findings consistent with {label}"

#: The `report` style: sentences as a radiology report words a finding, ensembled like `templates`.
REPORT_TEMPLATES = (
    "The chest radiograph demonstrates {label}.",
    "There is radiographic evidence of {label}.",
    "Impression: {label}.",
    "Frontal view of the chest shows {label}.",
)


def _phrase(label: str) -> str:
    """A label as running text: lower case (acronyms such as ILD or COPD kept), underscores as spaces."""
    return " ".join(word if len(word) > 1 and word.isupper() else word.lower() for word in label.replace("_", " ").split())


def _consistent(label: str) -> list[Prompt]:
    return [Prompt(label, CONSISTENT_TEMPLATE.format(label=_phrase(label)), True)]


def _report(label: str) -> list[Prompt]:
    return [Prompt(label, template.format(label=_phrase(label)), True) for template in REPORT_TEMPLATES]


@cache
def lay_phrases() -> dict[str, tuple[str, ...]]:
    """Lay-language phrases per label name, from the shipped `prompt_sets/lay.json`."""
    data = json.loads(resources.files("embedstore.prompt_sets").joinpath("lay.json").read_text(encoding="utf-8"))
    return {label: tuple(phrases) for label, phrases in data["labels"].items()}


def _lay(label: str) -> list[Prompt]:
    """The label's lay phrases (ensembled); its own name where the data file has no entry for it."""
    return [Prompt(label, phrase, True) for phrase in lay_phrases().get(label, (label,))]


#: The built-in prompt styles (`embedstore extract --prompts`; `all` runs every one of them).
PROMPT_SETS: dict[PromptSet, Callable[[str], list[Prompt]]] = {
    PromptSet.NAMES: _names,
    PromptSet.TEMPLATES: _templates,
    PromptSet.POSNEG: _posneg,
    PromptSet.CONSISTENT: _consistent,
    PromptSet.REPORT: _report,
    PromptSet.LAY: _lay,
}
#: Each protocol's prompt set when none is asked for.
DEFAULT_PROMPTS: dict[Protocol, PromptSet] = {Protocol.STUDY: PromptSet.NAMES, Protocol.MULTILABEL: PromptSet.TEMPLATES}

#: A custom style's stored prompt set name is this prefix and the file's stem (`custom:my_prompts`).
CUSTOM_PREFIX = "custom:"


@dataclass(frozen=True)
class PromptFile:
    """A custom prompt style read from a file: per label its positive prompts and optional negatives."""

    name: str
    source: str
    sha256: str
    positives: dict[str, tuple[str, ...]]
    negatives: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def prompts(self, label: str) -> list[Prompt]:
        """The label's prompts; its bare name where the file has none for it."""
        if label not in self.positives:
            return [Prompt(label, label, True)]
        return ([Prompt(label, text, True) for text in self.positives[label]]
                + [Prompt(label, text, False) for text in self.negatives.get(label, ())])

    def as_config(self) -> dict[str, Any]:
        """What a run's config records: the file's name and sha256 and every prompt (Grad-CAM rebuilds the head from it)."""
        return {"name": self.name, "file": self.source, "sha256": self.sha256,
                "prompts": {label: {"positive": list(texts), "negative": list(self.negatives.get(label, ()))}
                            for label, texts in self.positives.items()}}

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> PromptFile:
        prompts = data["prompts"]
        return cls(data["name"], data["file"], data["sha256"],
                   {label: tuple(entry["positive"]) for label, entry in prompts.items()},
                   {label: tuple(entry["negative"]) for label, entry in prompts.items() if entry["negative"]})


def build_prompts(prompt_set: str, labels: list[str], custom: PromptFile | None = None) -> list[Prompt]:
    """Every prompt of `prompt_set` (or of the `custom` file's style) for each label, in label order."""
    if custom is not None:
        return [prompt for label in labels for prompt in custom.prompts(label)]
    builder = PROMPT_SETS[parse(PromptSet, prompt_set, "prompts")]
    return [prompt for label in labels for prompt in builder(label)]


def fallback_labels(prompt_set: str, labels: list[str], custom: PromptFile | None = None) -> list[str] | None:
    """The labels a style with its own phrases per label (`lay`, a custom file) has none for, so prompts
    with the bare name; None for the styles that build every label from its name."""
    if custom is not None:
        return [label for label in labels if label not in custom.positives]
    if prompt_set == PromptSet.LAY:
        return [label for label in labels if label not in lay_phrases()]
    return None


def custom_prompts(config: dict[str, Any]) -> PromptFile | None:
    """The custom prompt file a run's config recorded (None for a built-in style)."""
    recorded = config.get("prompts_file")
    return PromptFile.from_config(recorded) if recorded else None


def has_negatives(prompt_set: str | None, config: dict[str, Any]) -> bool:
    """Whether a zs run's prompts include negatives (its multilabel scores are then log-odds)."""
    custom = custom_prompts(config)
    return bool(custom.negatives) if custom is not None else prompt_set == PromptSet.POSNEG


# ---------------------------------------------------------------------------------------------
# Custom prompt files
# ---------------------------------------------------------------------------------------------

#: The columns of a CSV prompt file (`negative` optional).
CSV_COLUMNS = ("label", "prompt", "negative")


def _refuse(where: str, message: str) -> InputError:
    return InputError(f"prompts file {where}: {message}", parameter="prompts_file")


def _csv_prompts(path: Path, text: str) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, int]]:
    """(positives, negatives, first row of each label) of a CSV file with columns label,prompt[,negative]."""
    reader = csv.reader(io.StringIO(text))
    try:
        return _csv_rows(path, reader)
    except csv.Error as error:  # a field over csv's size limit, a NUL byte…
        raise _refuse(f"{path}:{reader.line_num}", f"not a CSV row ({error})") from None


def _csv_rows(path: Path, reader: Any) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, int]]:
    header = [cell.strip().lower() for cell in next(reader, [])]
    if header[:2] != ["label", "prompt"] or len(header) > 3 or header[2:] not in ([], ["negative"]):
        raise _refuse(f"{path}:1", f"the header must be label,prompt[,negative] (found {','.join(header) or 'nothing'})")
    positives: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    for cells in reader:
        row = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            raise _refuse(f"{path}:{row}", f"{len(cells)} columns, the header names {len(header)}")
        label, prompt, negative = (*(cell.strip() for cell in cells), "", "")[:3]
        if not label:
            raise _refuse(f"{path}:{row}", "the label is empty")
        if not prompt and not negative:
            raise _refuse(f"{path}:{row}", f"label {label!r} has no prompt")
        rows.setdefault(label, row)
        if prompt:
            positives.setdefault(label, []).append(prompt)
        if negative:
            negatives.setdefault(label, []).append(negative)
    return positives, negatives, rows


def _yaml_line(text: str, label: str) -> int:
    """The line of `label`'s key in a YAML file (1 when it cannot be told)."""
    key = re.compile(rf"^\s*(['\"]?){re.escape(label)}\1\s*:")
    return next((i for i, line in enumerate(text.splitlines(), start=1) if key.match(line)), 1)


def _strings(value: Any) -> list[str] | None:
    """A string or a list of strings as a list of non-empty stripped strings; None for anything else."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return None
    return [v.strip() for v in values if v.strip()]


def _yaml_prompts(path: Path, text: str) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, int]]:
    """(positives, negatives, line of each label) of a YAML mapping label → prompt, list of prompts, or
    {positive: …, negative: …} (read with `yaml.safe_load`: plain data only)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise _refuse(f"{path}:{mark.line + 1 if mark else 1}", problem) from None
    if not isinstance(data, dict):
        raise _refuse(f"{path}:1", "expected a mapping of label → prompts")
    positives: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    shape = "a prompt, a list of prompts, or {positive: …, negative: …}"
    for key, value in data.items():
        if not isinstance(key, str):  # `yes:` is a boolean, `1:` a number in YAML: a label is text
            raise _refuse(f"{path}:{_yaml_line(text, str(key))}", f"label {key!r} is not text; quote it")
        label = key.strip()
        row = _yaml_line(text, key)
        if not label:
            raise _refuse(f"{path}:{row}", "the label is empty")
        if isinstance(value, dict):
            unknown = sorted(str(k) for k in value if k not in ("positive", "negative"))
            if unknown:
                raise _refuse(f"{path}:{row}", f"label {label!r}: unknown key {unknown[0]!r} (use positive, negative)")
            positive, negative = _strings(value.get("positive", [])), _strings(value.get("negative", []))
        else:
            positive, negative = _strings(value), []
        if positive is None or negative is None:
            raise _refuse(f"{path}:{row}", f"label {label!r}: give {shape}")
        rows[label] = row
        if positive:
            positives[label] = positive
        if negative:
            negatives[label] = negative
    return positives, negatives, rows


#: How each kind of prompt file is read, by suffix.
PROMPT_FILE_READERS: dict[str, Callable[[Path, str], tuple[dict[str, list[str]], dict[str, list[str]],
                                                              dict[str, int]]]] = {
    ".csv": _csv_prompts,
    ".yaml": _yaml_prompts,
    ".yml": _yaml_prompts,
}


#: Largest custom prompt file read (a few thousand prompts take a few hundred kilobytes).
MAX_PROMPT_FILE_BYTES = 4 << 20


def read_prompt_file(path: Path | str) -> PromptFile:
    """A custom prompt style from a YAML or CSV file; a bad file is one InputError naming file:row."""
    path = Path(path)
    reader = PROMPT_FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise _refuse(str(path), f"suffix {path.suffix or '(none)'!r}: give a .yaml, .yml or .csv file")
    from embedstore.images import read_regular_bytes

    try:  # a regular file of bounded size only: a FIFO would block, /dev/zero never end
        raw = read_regular_bytes(path, MAX_PROMPT_FILE_BYTES)
    except InputError as error:
        raise _refuse(str(path), str(error)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _refuse(str(path), "not UTF-8 text") from None
    positives, negatives, rows = reader(path, text)
    for label, row in rows.items():
        if label in negatives and label not in positives:
            raise _refuse(f"{path}:{row}", f"label {label!r} has negative prompts but no positive one")
    if not positives:
        raise _refuse(str(path), "no prompts in it")
    return PromptFile(f"{CUSTOM_PREFIX}{path.stem}", path.name, hashlib.sha256(raw).hexdigest(),
                      {label: tuple(texts) for label, texts in positives.items()},
                      {label: tuple(texts) for label, texts in negatives.items()})


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_embedding(prompts: list[Prompt], text: np.ndarray, label: str, positive: bool, unit: bool) -> np.ndarray:
    rows = [i for i, p in enumerate(prompts) if p.label == label and p.positive == positive]
    chosen = _unit(text[rows]) if unit else text[rows]
    mean = chosen.mean(axis=0)
    return _unit(mean) if unit else mean


def _study_head(prompts: list[Prompt], text: np.ndarray, labels: list[str], logit_scale: float) -> Head:
    """The study's zero-shot logit: raw `encode_image` · raw `encode_text` — no normalisation, no logit scale."""
    weight = np.stack([_mean_embedding(prompts, text, label, True, unit=False) for label in labels])
    return Head(weight.astype(np.float64), np.zeros(len(labels)), normalize_input=False)


def _multilabel_head(prompts: list[Prompt], text: np.ndarray, labels: list[str], logit_scale: float) -> Head:
    """Cosine × logit scale against each label's (ensembled) prompt; with negative prompts, the
    log-odds of the two-way softmax between "{label}" and "no {label}" (CheXzero)."""
    rows = []
    for label in labels:
        direction = _mean_embedding(prompts, text, label, True, unit=True).astype(np.float64)
        if any(p.label == label and not p.positive for p in prompts):
            direction = direction - _mean_embedding(prompts, text, label, False, unit=True)
        rows.append(logit_scale * direction)
    return Head(np.stack(rows), np.zeros(len(labels)), normalize_input=True)


#: A zero-shot classifier is a linear head on the image embedding; scoring and Grad-CAM share it.
ZERO_SHOT_HEADS: dict[Protocol, Callable[[list[Prompt], np.ndarray, list[str], float], Head]] = {
    Protocol.STUDY: _study_head,
    Protocol.MULTILABEL: _multilabel_head,
}


def zero_shot_head(protocol: str, prompts: list[Prompt], text: np.ndarray, labels: list[str],
                   logit_scale: float) -> Head:
    """The protocol's zero-shot scorer as a linear head: `head.logits(image_embeddings)` are the scores."""
    return ZERO_SHOT_HEADS[parse(Protocol, protocol, "protocol")](prompts, text, labels, logit_scale)
