"""The 14 CheXpert labels in the study's order, and the clinical domain of each (DESIGN section 2)."""

from __future__ import annotations

CHEXPERT_LABELS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)

NO_FINDING = "No Finding"

DOMAINS: dict[str, tuple[str, ...]] = {
    "Cardiovascular": ("Enlarged Cardiomediastinum", "Cardiomegaly"),
    "Pulmonary": (
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
    ),
    "Skeletal": ("Fracture",),
    "Device": ("Support Devices",),
    "Normal": (NO_FINDING,),
}

DOMAIN_OF: dict[str, str] = {label: domain for domain, members in DOMAINS.items() for label in members}

#: Findings with a compact location on a frontal film (nodule, effusion, pneumothorax, devices,
#: fracture, enlarged heart): the ones a saliency map can be checked against a box for. Diffuse
#: findings (opacity, edema, …) are annotated too, but a single peak is a poor test for them.
LOCALISED_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Lung Lesion", "Pneumothorax", "Pleural Effusion", "Fracture",
                                       "Support Devices")
LOCALISED_GROUP = "localised findings"
