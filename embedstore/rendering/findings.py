"""The report's findings: a few sentences at the top of the page, each generated from stored figures.

For each protocol: which setting has the best value of each headline figure, and whether its 95 %
bootstrap interval overlaps the runner-up's (overlapping intervals do not show a difference; no
paired test is run); how each setting's separation ratio compares with the zero-shot one; how many
labels each setting predicts per image against how many the images have. For the dataset: ingest
checks that can flatter a result, when they are not zero. Nothing here computes a metric: every
number is a stored figure or arithmetic on stored figures (docs/report.md, "Findings")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from embedstore.analyses.common import MetricRow
from embedstore.rendering.pages import html_text
from embedstore.rendering.tables import in_study_order, setting_name

if TYPE_CHECKING:
    from embedstore.analyses.study import RunAnalysis


@dataclass(frozen=True)
class Headline:
    """A figure the findings name a winner for."""

    metric: str
    name: str
    higher_is_better: bool


#: The figures whose best setting the findings name, in this order.
HEADLINES = (
    Headline("macro_f1", "macro-F1 (all labels)", True),
    Headline("exact_match", "exact match", True),
    Headline("lrap", "LRAP", True),
    Headline("coverage_error", "coverage error", False),
    Headline("macro_auroc", "macro AUROC (labels with both classes)", True),
)

#: Ingest checks worth a sentence when not zero: (count, companion count, sentence template).
CHECK_SENTENCES = {
    "cross_split_duplicate_groups": (
        "cross_split_duplicate_images",
        "Ingest found {count} group(s) of byte-identical images ({other} images) in more than one split: the same "
        "image can be in training and in the split analysed, which flatters lp and ft."),
    "no_finding_from_uncertain": (
        None,
        "{count} image(s) count as {normal} only because none of their findings is positive; each has an "
        "uncertain (-1) finding."),
}


@dataclass(frozen=True)
class Finding:
    """One sentence, and the stored figures it states (written as `data-*` attributes on the page)."""

    kind: str
    text: str
    figures: dict[str, str] = field(default_factory=dict)


def _number(value: float) -> str:
    return f"{value:.3f}"


def _with_interval(row: MetricRow) -> str:
    if row.ci_low is None or row.ci_high is None:
        return _number(row.value)
    return f"{_number(row.value)} [{_number(row.ci_low)}, {_number(row.ci_high)}]"


def _overlap(a: MetricRow, b: MetricRow) -> bool | None:
    """Whether the two intervals overlap (None when either figure has none)."""
    if a.ci_low is None or a.ci_high is None or b.ci_low is None or b.ci_high is None:
        return None
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def _overlap_words(overlap: bool | None) -> str:
    if overlap is None:
        return "no intervals to compare"
    return "the intervals overlap" if overlap else "the intervals do not overlap"


def _figure(analysis: RunAnalysis, metric: str) -> MetricRow | None:
    row = analysis.figure(metric)
    return row if row is not None and math.isfinite(row.value) else None


def winner(analyses: Sequence[RunAnalysis], protocol: str, headline: Headline) -> Finding | None:
    """Which setting of `protocol` has the best `headline` figure, against the runner-up."""
    ranked = [(a, row) for a in in_study_order(analyses, protocol) if (row := _figure(a, headline.metric))]
    if len(ranked) < 2:
        return None
    ranked.sort(key=lambda pair: -pair[1].value if headline.higher_is_better else pair[1].value)
    (best, top), (second, runner_up) = ranked[0], ranked[1]
    best_name, second_name = setting_name(best, analyses), setting_name(second, analyses)
    figures = {"protocol": protocol, "metric": headline.metric, "run": best.run.run_id, "value": repr(top.value),
               "runner-up-run": second.run.run_id, "runner-up-value": repr(runner_up.value)}
    tied = [setting_name(a, analyses) for a, row in ranked if row.value == top.value]
    if len(tied) > 1:
        names = ", ".join(tied[:-1]) + f" and {tied[-1]}"
        text = f"{'All ' if len(tied) == len(ranked) > 2 else ''}{names} tie on {headline.name}, {_number(top.value)}."
        return Finding("tie", text, figures | {"overlap": "tie", "tied": str(len(tied))})
    overlap = _overlap(top, runner_up)
    direction = "highest" if headline.higher_is_better else "lowest"
    text = (f"{best_name} has the {direction} {headline.name}, {_with_interval(top)}, ahead of {second_name}, "
            f"{_with_interval(runner_up)}: {_overlap_words(overlap)}.")
    return Finding("winner", text, figures | {"overlap": {None: "none", True: "yes", False: "no"}[overlap]})


def separability_changes(analyses: Sequence[RunAnalysis], protocol: str) -> list[Finding]:
    """Each setting's separation ratio (inter- over intra-class distance) as a multiple of the
    zero-shot setting's (the first setting of the study table when there is no zs run)."""
    ordered = [(a, row) for a in in_study_order(analyses, protocol) if (row := _figure(a, "separation_ratio"))]
    if len(ordered) < 2:
        return []
    base, base_row = next(((a, row) for a, row in ordered if a.run.mode == "zs"), ordered[0])
    if base_row.value == 0:
        return []
    base_name = setting_name(base, analyses)
    found = []
    for analysis, row in ordered:
        if analysis is base:
            continue
        change = row.value / base_row.value
        name = setting_name(analysis, analyses)
        text = (f"Separation ratio (inter- / intra-class distance) of {name}: {_with_interval(row)}, "
                f"{change:.2f}× that of {base_name}, {_with_interval(base_row)}: {_overlap_words(_overlap(row, base_row))}.")
        found.append(Finding("separability", text, {
            "protocol": protocol, "metric": "separation_ratio", "run": analysis.run.run_id, "value": repr(row.value),
            "baseline-run": base.run.run_id, "baseline-value": repr(base_row.value), "change": repr(change)}))
    return found


@dataclass(frozen=True)
class LabelCounts:
    """Labels per image on one split: predicted by a setting, and true."""

    images: int
    predicted: int
    true: int


def label_counts(analysis: RunAnalysis, split: str) -> LabelCounts | None:
    """How many labels the setting predicted on `split`, and how many the images have, from the stored
    micro-F1, Hamming loss and per-label positives: with TP, FP, FN summed over labels and images,
    Hamming loss × images × labels = FP + FN and micro-F1 = 2 TP / (2 TP + FP + FN), so the predicted
    labels TP + FP = (FP + FN) / (1 − micro-F1) − (TP + FN). None where a figure is missing (e.g. the
    thresholded figures on the split the thresholds were tuned on)."""
    micro, hamming = _figure(analysis, "micro_f1"), _figure(analysis, "hamming_loss")
    positives = [analysis.figure("positives", label) for label in analysis.run.labels]
    images = int((analysis.run.splits == split).sum())
    if micro is None or hamming is None or images == 0 or any(p is None for p in positives):
        return None
    true = round(sum(p.value for p in positives if p is not None))
    # Hamming loss is over the known pairs: every image × label unless pairs were left out (`--uncertain ignore`)
    wrong = hamming.value * float(hamming.params.get("known_pairs", images * len(analysis.run.labels)))
    predicted = true if micro.value >= 1 else round(wrong / (1 - micro.value) - true)
    return LabelCounts(images, predicted, true)


def over_prediction(analyses: Sequence[RunAnalysis], protocol: str, split: str) -> list[Finding]:
    """Per setting: labels predicted per image against true labels per image."""
    found = []
    for analysis in in_study_order(analyses, protocol):
        counts = label_counts(analysis, split)
        if counts is None:
            continue
        predicted, true = counts.predicted / counts.images, counts.true / counts.images
        if predicted > true:
            verdict = f"over-prediction, {predicted / true:.1f}× as many" if true else "over-prediction"
        elif predicted < true:
            verdict = f"under-prediction, {predicted / true:.2f}× as many"
        else:
            verdict = "as many as there are"
        name = setting_name(analysis, analyses)
        text = (f"{name} predicts {predicted:.2f} labels per image where the {counts.images} images have "
                f"{true:.2f}: {verdict}.")
        found.append(Finding("labels-per-image", text, {
            "protocol": protocol, "run": analysis.run.run_id, "images": str(counts.images),
            "predicted": str(counts.predicted), "true": str(counts.true)}))
    return found


def ingest_findings(checks: Mapping[str, int], normal: str | None = None) -> list[Finding]:
    """A sentence for each ingest check in CHECK_SENTENCES whose count is not zero; `normal` names the
    dataset's normal label (domain `Normal`)."""
    found = []
    for check, (companion, template) in CHECK_SENTENCES.items():
        count = int(checks.get(check) or 0)
        if count:
            other = int(checks.get(companion) or 0) if companion else 0
            text = template.format(count=count, other=other, normal=normal or "normal")
            found.append(Finding("ingest", text, {"check": check, "value": str(count)}))
    return found


def findings(analyses: Sequence[RunAnalysis], protocols: Sequence[str], checks: Mapping[str, int],
             split: str = "test") -> dict[str, list[Finding]]:
    """Every finding, grouped by section title (one per protocol with results, then the dataset)."""
    sections: dict[str, list[Finding]] = {}
    for protocol in protocols:
        found = [f for headline in HEADLINES if (f := winner(analyses, protocol, headline))]
        found += separability_changes(analyses, protocol)
        found += over_prediction(analyses, protocol, split)
        if found:
            sections[f"{protocol} protocol"] = found
    normal = next((a.run.normal_label for a in analyses if a.run.normal_label), None)
    if dataset := ingest_findings(checks, normal):
        sections["dataset"] = dataset
    return sections


def findings_html(sections: Mapping[str, Sequence[Finding]], split: str) -> str:
    """The findings as a section of lists; every text and attribute escaped."""
    parts = ["<section id='findings'><h2>Findings</h2>",
             f"<p class='note'>generated from the stored figures of the {html_text(split)} split; "
             "brackets: 95 % bootstrap intervals. Overlapping intervals do not show a difference; "
             "no paired test is run.</p>"]
    if not sections:
        parts.append("<p>no finding could be generated from the stored figures</p>")
    for title, items in sections.items():
        parts.append(f"<h3>{html_text(title)}</h3><ul>")
        for item in items:
            attributes = "".join(f" data-{html_text(key)}='{html_text(value)}'" for key, value in item.figures.items())
            parts.append(f"<li data-kind='{html_text(item.kind)}'{attributes}>{html_text(item.text)}</li>")
        parts.append("</ul>")
    parts.append("</section>")
    return "".join(parts)
