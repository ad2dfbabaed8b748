"""Tables of stored figures: the study table and its detail tables, the Grad-CAM localisation table,
and every figure as JSON records. Each cell is `value [low, high]` (95 % bootstrap interval) or `—`
where a figure is undefined; nothing is computed here (docs/analyze.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from embedstore.analyses.common import MetricRow
from embedstore.labels import LOCALISED_GROUP

if TYPE_CHECKING:
    from embedstore.analyses.study import RunAnalysis

#: The study table's figure columns: (header, stored metric). Arrows say which direction is better.
STUDY_COLUMNS = (
    ("inter-class dist ↑", "inter_class_distance"),
    ("intra-class dist ↓", "intra_class_distance"),
    ("ratio ↑", "separation_ratio"),
    ("macro-F1, all labels ↑", "macro_f1"),
    ("exact match ↑", "exact_match"),
    ("LRAP ↑", "lrap"),
    ("coverage error ↓", "coverage_error"),
)

TIME_COLUMN = "train time (min) ↓"

#: The threshold-free macros' headers say which labels they average (macro-F1 averages every label).
MACRO_AUROC_HEADER = "macro AUROC (labels with both classes)"
MACRO_AUPRC_HEADER = "macro AUPRC (labels with a positive)"

#: The image–report retrieval table's rows (stored metric direction, title) and recall cut-offs.
RETRIEVAL_DIRECTIONS = (("image_to_report", "images → reports"), ("report_to_image", "reports → images"))
RETRIEVAL_KS = (1, 5, 10)

#: The order of settings in every table: the study's (zs, ft, lp), then anything else.
SETTING_ORDER = ("zs", "ft", "lp")


def _cell(row: MetricRow | None, digits: int = 3) -> str:
    if row is None or not np.isfinite(row.value):
        return "—"
    text = f"{row.value:.{digits}g}" if abs(row.value) >= 100 and digits else f"{row.value:.{digits}f}"
    if row.ci_low is not None and row.ci_high is not None:
        text += f" [{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"
    return text


def _delong_cell(row: MetricRow | None) -> str:
    """The DeLong interval stored beside a per-label AUROC's bootstrap interval."""
    interval = None if row is None else row.params.get("delong_interval")
    return "—" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def setting_name(analysis: RunAnalysis, analyses: Sequence[RunAnalysis]) -> str:
    """A setting's name in every table and in the report's findings: its mode, with the prompt set
    (or run id) when a protocol has two runs of that mode."""
    same_mode = [a for a in analyses if a.protocol == analysis.protocol and a.run.mode == analysis.run.mode]
    name = analysis.run.mode
    if len(same_mode) > 1:
        name += f" ({analysis.run.prompt_set or analysis.run.run_id})"
    return name


def in_study_order(analyses: Sequence[RunAnalysis], protocol: str) -> list[RunAnalysis]:
    """The analyses of `protocol`, in the study table's row order."""
    return sorted((a for a in analyses if a.protocol == protocol),
                  key=lambda a: SETTING_ORDER.index(a.run.mode) if a.run.mode in SETTING_ORDER else len(SETTING_ORDER))


def study_table(analyses: Sequence[RunAnalysis], protocol: str) -> pl.DataFrame:
    """The study table for one protocol: one row per setting. The time column is what embedstore
    spent training (lp: the head fitted on cached vectors, not the notebook's re-encoding loop)."""
    records = []
    for analysis in in_study_order(analyses, protocol):
        record = {"setting": setting_name(analysis, analyses)}
        for title, metric in STUDY_COLUMNS:
            record[title] = _cell(analysis.figure(metric))
        minutes = analysis.run.train_seconds / 60 if analysis.run.train_seconds and analysis.run.mode != "zs" else None
        note = " (head on cached vectors)" if analysis.run.mode == "lp" else ""
        record[TIME_COLUMN] = "—" if minutes is None else f"{minutes:.2f}{note}"
        record["run"] = analysis.run.run_id
        records.append(record)
    return pl.DataFrame(records)


def detail_tables(analyses: Sequence[RunAnalysis], protocol: str) -> dict[str, pl.DataFrame]:
    """Per-label, per-domain, normal-vs-abnormal, neighbour, calibration and retrieval tables for one protocol."""
    chosen = [a for a in analyses if a.protocol == protocol]
    per_label, per_domain, binary, knn, calibrated, retrieved = [], [], [], [], [], []
    for analysis in chosen:
        setting = setting_name(analysis, analyses)
        for label in analysis.run.labels:
            per_label.append({"setting": setting, "label": label,
                              "positives": _cell(analysis.figure("positives", label), 0),
                              "F1": _cell(analysis.figure("f1", label)),
                              "AUROC": _cell(analysis.figure("auroc", label)),
                              "AUROC, DeLong 95 %": _delong_cell(analysis.figure("auroc", label)),
                              "AUPRC": _cell(analysis.figure("auprc", label)),
                              "precision": _cell(analysis.figure("precision", label)),
                              "recall": _cell(analysis.figure("recall", label))})
        for domain in analysis.run.domains:
            if protocol == "study":
                per_domain.append({"setting": setting, "domain": domain,
                                   "positives (any label)": _cell(analysis.figure("domain_positives", domain), 0),
                                   "F1 (any label)": _cell(analysis.figure("domain_any_f1", domain)),
                                   "AUROC (any label)": _cell(analysis.figure("domain_any_auroc", domain)),
                                   "AUPRC (any label)": _cell(analysis.figure("domain_any_auprc", domain))})
            else:
                per_domain.append({"setting": setting, "domain": domain,
                                   "per-label macro F1": _cell(analysis.figure("domain_macro_f1", domain)),
                                   "per-label macro AUROC": _cell(analysis.figure("domain_macro_auroc", domain))})
        binary.append({"setting": setting, "AUROC": _cell(analysis.figure("abnormal_auroc")),
                       "F1": _cell(analysis.figure("abnormal_f1")),
                       MACRO_AUROC_HEADER: _cell(analysis.figure("macro_auroc")),
                       MACRO_AUPRC_HEADER: _cell(analysis.figure("macro_auprc"))})
        for scope in sorted({r.metric.split(":")[1] for r in analysis.rows if r.metric.startswith("knn_jaccard:")}):
            knn.append({"setting": setting, "scope": scope,
                        "label-set Jaccard": _cell(analysis.figure(f"knn_jaccard:{scope}")),
                        "vote " + MACRO_AUROC_HEADER: _cell(analysis.figure(f"knn_vote_macro_auroc:{scope}")),
                        "vote macro-F1 (all labels)": _cell(analysis.figure(f"knn_vote_macro_f1:{scope}"))})
        for maybe_label in [None, *analysis.run.labels]:
            if analysis.figure("calibration.brier", maybe_label) is not None:
                calibrated.append({"setting": setting, "label": maybe_label or "macro",
                                   "ECE (15 equal-mass bins)": _cell(analysis.figure("calibration.ece_equal_mass",
                                                                                     maybe_label)),
                                   "ECE (15 equal-width bins)": _cell(analysis.figure("calibration.ece_equal_width",
                                                                                      maybe_label)),
                                   "Brier": _cell(analysis.figure("calibration.brier", maybe_label)),
                                   "ECE after temperature": _cell(analysis.figure(
                                       "calibration.ece_equal_mass_temperature", maybe_label)),
                                   "ECE after isotonic": _cell(analysis.figure("calibration.ece_equal_mass_isotonic",
                                                                               maybe_label))})
        for direction, title in RETRIEVAL_DIRECTIONS:
            if analysis.figure(f"retrieval.{direction}.median_rank") is not None:
                retrieved.append({"setting": setting, "queries → gallery": title}
                                 | {f"recall@{k} ↑": _cell(analysis.figure(f"retrieval.{direction}.recall_at_{k}"))
                                    for k in RETRIEVAL_KS}
                                 | {"median rank ↓": _cell(analysis.figure(f"retrieval.{direction}.median_rank"), 1)})
    return {"per label": pl.DataFrame(per_label), "per domain": pl.DataFrame(per_domain),
            "normal vs abnormal, and threshold-free": pl.DataFrame(binary),
            "nearest-neighbour label agreement": pl.DataFrame(knn),
            "calibration (recalibrated on val)": pl.DataFrame(calibrated),
            "image–report retrieval (a hit: same study)": pl.DataFrame(retrieved)}


def comparison_table(analyses: Sequence[RunAnalysis], protocol: str) -> pl.DataFrame:
    """`analyze --compare`'s paired comparisons of one protocol, macro and whole-split figures (per-label
    rows are in `metrics`): B − A with its paired interval, and DeLong's p-value for macro AUROC."""
    names = {a.run.run_id: setting_name(a, analyses) for a in analyses if a.protocol == protocol}
    rows = []
    for analysis in analyses:
        if analysis.protocol != protocol:
            continue
        for row in analysis.rows:
            if row.metric.startswith("compare.") and row.label is None:
                p_value = row.params.get("delong_p")
                rows.append({"comparison": f"{names[analysis.run.run_id]} − "
                                           f"{names.get(str(row.params.get('baseline')), row.params.get('baseline'))}",
                             "figure": row.metric.removeprefix("compare."), "difference [95 % paired]": _cell(row),
                             "DeLong p": "—" if p_value is None or not np.isfinite(p_value) else f"{p_value:.3g}"})
    return pl.DataFrame(rows, schema={"comparison": pl.String, "figure": pl.String,
                                      "difference [95 % paired]": pl.String, "DeLong p": pl.String})


def prompt_sensitivity_table(analyses: Sequence[RunAnalysis], protocol: str) -> pl.DataFrame:
    """The prompt sweeps of one protocol (`prompt_sensitivity.*`): per sweep and label (macro first) the
    styles' AUROC and F1 range and standard deviation, and the best style(s) by AUROC."""
    found: dict[tuple[str, str | None], dict[str, MetricRow]] = {}
    for analysis in analyses:
        if analysis.protocol != protocol:
            continue
        for row in analysis.rows:
            if row.metric.startswith("prompt_sensitivity."):
                found.setdefault((str(row.params.get("sweep")), row.label), {})[row.metric.partition(".")[2]] = row

    def spread(figures: dict[str, MetricRow], name: str) -> tuple[str, str]:
        low, high, sd = (figures.get(f"{name}_{part}") for part in ("min", "max", "sd"))
        if low is None or high is None or sd is None:
            return "—", "—"
        return f"{low.value:.3f}–{high.value:.3f}", f"{sd.value:.3f}"

    rows = []
    for (sweep, label), figures in found.items():
        rank = figures.get("rank")
        values = rank.params.get("values", {}) if rank is not None else {}
        best = max(values.values()) if values else None
        (auroc, auroc_sd), (f1, f1_sd) = spread(figures, "auroc"), spread(figures, "f1")
        rows.append({"sweep": sweep, "label": label or "macro", "styles": len(values), "AUROC min–max": auroc,
                     "AUROC sd": auroc_sd, "F1 min–max": f1, "F1 sd": f1_sd,
                     "best style (AUROC)": ", ".join(style for style, value in values.items() if value == best)})
    rows.sort(key=lambda row: (row["sweep"], row["label"] != "macro"))
    return pl.DataFrame(rows, schema={"sweep": pl.String, "label": pl.String, "styles": pl.Int64,
                                      "AUROC min–max": pl.String, "AUROC sd": pl.String, "F1 min–max": pl.String,
                                      "F1 sd": pl.String, "best style (AUROC)": pl.String})


#: The localisation tables of `gradcam validate`: title → (the figure counting each line's maps, column → metric).
LOCALISATION_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "localisation": ("gradcam.pointing_game", {
        "pointing game": "gradcam.pointing_game", "pointing chance": "gradcam.pointing_chance",
        "random weights: pointing": "gradcam.random_weights.pointing_game",
        "energy inside": "gradcam.energy_inside", "random weights: energy": "gradcam.random_weights.energy_inside",
        "area share": "gradcam.area_share", "IoU top": "gradcam.iou_top", "IoU chance": "gradcam.iou_chance",
        "deletion AUC ↓": "gradcam.deletion_auc", "insertion AUC ↑": "gradcam.insertion_auc"}),
    "CheXlocalize (thresholded maps; hit = maximum inside, no tolerance)": ("localisation.miou", {
        "mIoU": "localisation.miou", "mIoU (Otsu)": "localisation.miou_otsu", "hit rate": "localisation.hit_rate",
        "random weights: mIoU": "localisation.random_weights.miou",
        "random weights: hit rate": "localisation.random_weights.hit_rate",
        "mIoU small": "localisation.miou.small", "mIoU medium": "localisation.miou.medium",
        "mIoU large": "localisation.miou.large", "hit small": "localisation.hit_rate.small",
        "hit medium": "localisation.hit_rate.medium", "hit large": "localisation.hit_rate.large"}),
    "human ceiling (each reader held out against the others' union)": ("localisation.human_miou", {
        "human mIoU": "localisation.human_miou", "model mIoU": "localisation.held_out_miou",
        "gap mIoU [paired]": "localisation.gap_to_human.miou", "share of human mIoU": "localisation.fraction_of_human.miou",
        "human hit rate": "localisation.human_hit_rate", "model hit rate": "localisation.held_out_hit_rate",
        "gap hit rate [paired]": "localisation.gap_to_human.hit_rate",
        "share of human hit rate": "localisation.fraction_of_human.hit_rate"}),
    "phrase grounding (zs: the annotated sentence vs the label name as the map's target)": ("grounding.hit_rate", {
        "sentence: hit rate": "grounding.hit_rate", "sentence: mIoU (Otsu)": "grounding.miou",
        "sentence: CNR": "grounding.cnr", "label: hit rate": "grounding.label_hit_rate",
        "label: mIoU (Otsu)": "grounding.label_miou", "label: CNR": "grounding.label_cnr"}),
}


def localisation_tables(rows: Sequence[MetricRow]) -> dict[str, pl.DataFrame]:
    """The localisation tables that `rows` have figures for: one line per label (and `all`, and the
    localised findings), each figure as `value [low, high]`."""
    index = {(r.metric, r.label): r for r in rows}
    tables = {}
    for title, (counted, columns) in LOCALISATION_TABLES.items():
        labels = [None, LOCALISED_GROUP] + sorted({r.label for r in rows if r.label not in (None, LOCALISED_GROUP)
                                                   and r.metric == counted})
        records = []
        for label in labels:
            count = index.get((counted, label))
            if count is None:
                continue
            record: dict[str, Any] = {"label": label or "all", "maps": count.params.get("n_maps")}
            record |= {name: _cell(index.get((metric, label)), 3) for name, metric in columns.items()}
            records.append(record)
        if records:
            tables[title] = pl.DataFrame(records)
    return tables


def metrics_records(analyses: Sequence[RunAnalysis]) -> list[dict[str, object]]:
    """Every figure as a plain record (the JSON output)."""
    return [{"run_id": a.run.run_id, "mode": a.run.mode, "protocol": a.protocol, **asdict(r)}
            for a in analyses for r in a.rows]
