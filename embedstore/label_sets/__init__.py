"""Label sets, one data file each (`<name>.json` in this folder): a dataset's own label names in its
own order, the clinical domain of each, its normal label, and the CheXpert label each corresponds to
where one does (so that cross-dataset tables line up; docs/datasets.md, "Label sets").

A file holds `name`, `description`, `normal` (the label that means "nothing found", or null) and
`labels`: a list of `{"name", "domain", "chexpert"}` (`chexpert` null where no CheXpert label
corresponds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: The domain of a label no label set names (a manifest's own labels).
OTHER_DOMAIN = "Other"


@dataclass(frozen=True)
class LabelSet:
    """One dataset's labels: names in order, domain and CheXpert counterpart of each, the normal label."""

    name: str
    description: str
    labels: tuple[str, ...]
    domains: dict[str, str]
    chexpert: dict[str, str | None]
    normal: str | None

    def domain(self, label: str) -> str:
        return self.domains.get(label, OTHER_DOMAIN)


def _read(text: str) -> LabelSet:
    data = json.loads(text)
    entries = data["labels"]
    return LabelSet(
        name=data["name"], description=data["description"], labels=tuple(e["name"] for e in entries),
        domains={e["name"]: e["domain"] for e in entries}, chexpert={e["name"]: e.get("chexpert") for e in entries},
        normal=data.get("normal"),
    )


@cache
def label_sets() -> dict[str, LabelSet]:
    """Every label set shipped in this folder, by name."""
    found = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            label_set = _read(entry.read_text(encoding="utf-8"))
            found[label_set.name] = label_set
    return found


def label_set(name: str) -> LabelSet:
    """The label set called `name` (a programming error if there is none: names come from loaders)."""
    return label_sets()[name]


def known_domain(label: str) -> str:
    """The domain of `label` in the first label set (by name) that has it; `Other` if none does."""
    for candidate in label_sets().values():
        if label in candidate.domains:
            return candidate.domains[label]
    return OTHER_DOMAIN
