"""The 14 CheXpert labels in the study's order and their domains, the localised findings, and the
spellings a label value may have."""

from __future__ import annotations

from embedstore.label_sets import label_set

#: The study's 14 labels, their order and domains: the CheXpert label set's data file
#: (embedstore/label_sets/chexpert.json), the one place they are written.
CHEXPERT_LABELS: tuple[str, ...] = label_set("chexpert").labels

NO_FINDING = "No Finding"

#: The CheXpert labels of each clinical domain, in the study's order.
DOMAINS: dict[str, tuple[str, ...]] = {
    domain: tuple(label for label in CHEXPERT_LABELS if label_set("chexpert").domain(label) == domain)
    for domain in dict.fromkeys(label_set("chexpert").domain(label) for label in CHEXPERT_LABELS)
}

#: Findings with a compact location on a frontal film (nodule, effusion, pneumothorax, devices,
#: fracture, enlarged heart): the ones a saliency map can be checked against a box for. Diffuse
#: findings (opacity, edema, …) are annotated too, but a single peak is a poor test for them.
LOCALISED_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Lung Lesion", "Pneumothorax", "Pleural Effusion", "Fracture",
                                       "Support Devices")
LOCALISED_GROUP = "localised findings"

#: The exact spellings a label value may have in a CSV (or a Parquet text column), after trimming
#: ASCII spaces and tabs, and what each means (blank: not mentioned, stored as NULL). Nothing else is
#: read as a number: not `+1`, `1e0`, `-0`, `1.00`, `01`, `true`, fullwidth `１` or other non-ASCII.
LABEL_VALUES: dict[str, int | None] = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}
LABEL_SPELLINGS = "1, 1.0, 0, 0.0, -1, -1.0 or blank"


def parse_label_value(raw: object) -> int | None:
    """One label value: a LABEL_VALUES spelling, or (from a typed Parquet column) the integer or float
    1, 0 or -1, or null. Raises ValueError for anything else (NaN, booleans, 2, 0.5, bytes, …)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip(" \t")
        if text in LABEL_VALUES:
            return LABEL_VALUES[text]
    elif isinstance(raw, int | float) and not isinstance(raw, bool) and raw in (1, 0, -1):
        return int(raw)
    raise ValueError(f"{raw!r} is not {LABEL_SPELLINGS}")
