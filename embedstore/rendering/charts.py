"""Altair charts of stored results. Charts draw what `analyze` (and `ingest`, `extract`, `gradcam
validate`) stored; they compute no metric. Each is saved as self-contained HTML (Vega inlined, no
network), PNG and the Vega-Lite JSON (docs/report.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedstore import queries
from embedstore.atomic import atomic_path
from embedstore.choices import ChartKind, ColorBy, PerLabelMetric, Protocol, Reducer, parse
from embedstore.errors import InputError
from embedstore.rendering.pages import chart_page
from embedstore.store import Store, resolve_dataset

if TYPE_CHECKING:
    import altair as alt

SPLIT_ORDER = ["train", "val", "test"]
MODE_ORDER = ["zs", "lp", "ft"]


@dataclass(frozen=True)
class ChartOptions:
    """Options of `embedstore chart`."""

    runs: tuple[str, ...] = ()
    protocol: Protocol | None = None
    data: str | None = None
    color_by: ColorBy = ColorBy.DOMAIN
    metric: PerLabelMetric = PerLabelMetric.F1
    reduce: Reducer = Reducer.PCA
    max_points: int = 1500
    seed: int = 42
    #: projection: put each test report's first 80 characters in the tooltips (patient text: off by default).
    include_text: bool = False

    def __post_init__(self) -> None:
        """Check the closed choices when called from Python (the CLI's types have checked them already)."""
        if self.protocol is not None:
            object.__setattr__(self, "protocol", parse(Protocol, self.protocol))
        object.__setattr__(self, "color_by", parse(ColorBy, self.color_by, "colour-by"))
        object.__setattr__(self, "metric", parse(PerLabelMetric, self.metric, "per-label metric"))
        object.__setattr__(self, "reduce", parse(Reducer, self.reduce, "reducer"))


def _metric_rows(store: Store, options: ChartOptions, metrics: list[str]) -> list[dict[str, Any]]:
    with store.reader() as con:
        rows = queries.fetch_arrow(con, "chart_metrics", metrics=metrics).to_pylist()
    rows = [r for r in rows if (not options.runs or r["run_id"] in options.runs)
            and (options.protocol is None or r["protocol"] == options.protocol)]
    if not rows:
        raise InputError("no stored figures to draw; run `embedstore analyze` first")
    for row in rows:
        row["setting"] = f"{row['mode']} ({row['run_id'][-6:]})"
    return rows


def labels_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Label distribution per split (the study's bar chart)."""
    import altair as alt

    dataset = resolve_dataset(store, options.data)
    with store.reader() as con:
        rows = queries.fetch_arrow(con, "label_stats", dataset=dataset).to_pylist()
    values = [{"label": r["label"], "position": i, "split": split, "positives": r[split]}
              for i, r in enumerate(rows) for split in SPLIT_ORDER]
    return alt.Chart(alt.Data(values=values), title="Positive images per label and split").mark_bar().encode(
        x=alt.X("positives:Q", title="positive images"),
        y=alt.Y("label:N", sort=_BY_POSITION, title=None),
        color=alt.Color("split:N", sort=SPLIT_ORDER),
        yOffset=alt.YOffset("split:N", sort=SPLIT_ORDER),
        tooltip=["label:N", "split:N", "positives:Q"],
    ).properties(width=480)


#: Labels in the study's order through a numeric `position` field: a sort list of label names would be
#: compiled into a Vega expression, which a stored label name could break.
_BY_POSITION = {"field": "position", "op": "min"}


def _with_positions(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with store.reader() as con:
        order = {row[0]: i for i, row in enumerate(queries.fetch(con, "label_order"))}
    for row in rows:
        row["position"] = order.get(row["label"], len(order))
    return rows


MACRO_TITLES = {"macro_f1": "macro-F1 (all labels)", "macro_auroc": "macro AUROC (labels with both classes)"}


def _interval_bars(rows: list[dict[str, Any]], title: str, column: str) -> alt.TopLevelMixin:
    import altair as alt

    base = alt.Chart(alt.Data(values=rows))
    bars = base.mark_bar().encode(
        x=alt.X("mode:N", sort=MODE_ORDER, title=None), y=alt.Y("value:Q", title=None),
        color=alt.Color("mode:N", sort=MODE_ORDER, legend=None),
        tooltip=["run_id:N", "mode:N", "protocol:N", "metric:N", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")])
    errors = base.mark_rule(color="black").encode(x=alt.X("mode:N", sort=MODE_ORDER), y="ci_low:Q", y2="ci_high:Q")
    return (bars + errors).properties(width=110, height=160).facet(
        column=alt.Column(f"{column}:N", title=None), row=alt.Row("protocol:N", title=None), title=title,
    ).resolve_scale(y="independent")


def separability_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Inter, intra and ratio per setting and protocol, with 95 % intervals."""
    rows = _metric_rows(store, options, ["inter_class_distance", "intra_class_distance", "separation_ratio"])
    return _interval_bars(rows, "Class separability (test split)", "metric")


def metrics_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """The study table's classification columns as grouped bars with intervals."""
    rows = _metric_rows(store, options, ["macro_f1", "exact_match", "lrap", "coverage_error", "macro_auroc"])
    for row in rows:  # the facet titles say which labels each macro averages; `metric` stays the stored name
        row["figure"] = MACRO_TITLES.get(row["metric"], row["metric"])
    return _interval_bars(rows, "Classification (test split)", "figure")


def per_label_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Heatmap of a per-label figure (f1, auroc or auprc: `options.metric`), label × setting."""
    import altair as alt

    rows = _with_positions(store, [r for r in _metric_rows(store, options, [options.metric]) if r["label"]])
    return alt.Chart(alt.Data(values=rows), title=f"Per-label {options.metric} (test split)").mark_rect().encode(
        x=alt.X("setting:N", title=None), y=alt.Y("label:N", sort=_BY_POSITION, title=None),
        color=alt.Color("value:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title=options.metric),
        tooltip=["label:N", "setting:N", "protocol:N", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")],
    ).facet(column=alt.Column("protocol:N", title=None)).resolve_scale(x="independent")


def thresholds_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """The study's threshold sweep: macro-F1 and exact match against the threshold; LRAP and coverage
    error (threshold-free) as reference lines."""
    import altair as alt

    sweep = _metric_rows(store, ChartOptions(options.runs, Protocol.STUDY), ["sweep_macro_f1", "sweep_exact_match"])
    for row in sweep:
        row["threshold"] = json.loads(row["params"])["threshold"]
    flat = _metric_rows(store, ChartOptions(options.runs, Protocol.STUDY), ["lrap"])
    lines = alt.Chart(alt.Data(values=sweep)).mark_line(point=True).encode(
        x=alt.X("threshold:Q", title="threshold on row-min-max scores"), y=alt.Y("value:Q", title=None),
        color=alt.Color("setting:N"), strokeDash=alt.StrokeDash("metric:N"),
        tooltip=["setting:N", "metric:N", "threshold:Q", alt.Tooltip("value:Q", format=".3f")])
    rules = alt.Chart(alt.Data(values=flat)).mark_rule(strokeDash=[2, 2]).encode(
        y="value:Q", color=alt.Color("setting:N"), tooltip=["setting:N", alt.Tooltip("value:Q", title="LRAP")])
    return (lines + rules).properties(width=480, height=280,
                                      title="Study protocol: threshold sweep (dotted rules: LRAP)")


def neighbors_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """kNN label agreement: precision@k per label and setting (within-split, leave-one-out)."""
    import altair as alt

    rows = _with_positions(store, [r for r in _metric_rows(store, options, ["knn_precision_at_k:within"]) if r["label"]])
    return alt.Chart(alt.Data(values=rows), title="Neighbour label agreement: precision@k per label").mark_bar().encode(
        x=alt.X("value:Q", title="share of neighbours sharing the label"),
        y=alt.Y("label:N", sort=_BY_POSITION, title=None),
        color="setting:N", yOffset="setting:N",
        tooltip=["label:N", "setting:N", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=420).facet(column=alt.Column("protocol:N", title=None))


def _pca(x: np.ndarray, texts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, _, axes = np.linalg.svd(x - mean, full_matrices=False)
    return (x - mean) @ axes[:2].T, (texts - mean) @ axes[:2].T


def _umap(x: np.ndarray, texts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import umap
    except ImportError:
        raise InputError("the UMAP projection needs umap-learn: pip install 'embedstore[umap]'") from None
    reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit(x)
    return reducer.embedding_, reducer.transform(texts) if len(texts) else np.zeros((0, 2))


#: `--reduce`: how the projection chart maps embeddings to 2-D (prompts go through the same map).
REDUCERS: dict[Reducer, Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]] = {
    Reducer.PCA: _pca,
    Reducer.UMAP: _umap,
}


def projection_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """2-D PCA (or UMAP) of each run's test-split image embeddings, faceted by run; prompts as diamonds.
    Tooltips name each image by sample id; its report text only with `include_text`."""
    import altair as alt

    from embedstore.analyses.rundata import dataset_runs, load_run

    run_ids = list(options.runs) or dataset_runs(store, resolve_dataset(store, options.data))
    points: list[dict[str, Any]] = []
    reports: dict[int, str | None] = {}
    if options.include_text:
        with store.reader() as con:
            reports = {row["sample_id"]: row["report"] for row in queries.fetch_arrow(con, "sample_reports").to_pylist()}
    for run_id in run_ids:
        run = load_run(store, run_id)
        test = np.flatnonzero(run.splits == "test")[: options.max_points]
        x = run.vectors("test")[: options.max_points].astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        with store.reader() as con:
            prompts = queries.fetch(con, "run_prompts", run_id=run_id)
        texts = np.array([np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for *_, v in prompts]).reshape(
            len(prompts), x.shape[1])
        coords, text_coords = REDUCERS[options.reduce](x, texts, options.seed)
        setting = f"{run.mode} ({run.protocol}, {run_id[-6:]})"
        normal = run.normal_label  # the label set's "nothing found" label (domain Normal), if it has one
        for i, (a, b) in zip(test, coords, strict=True):
            positives = [label for j, label in enumerate(run.labels) if run.targets[i, j] and run.known_pairs[i, j]]
            first = positives[0] if positives else (normal or "none")
            status = "normal" if positives and positives == [normal] else "abnormal"
            if not positives and not run.known_pairs[i].all():
                status = "unknown"  # no known positive, and a label left out (`--uncertain ignore`)
            point = {"setting": setting, "pc1": float(a), "pc2": float(b), "kind": "image",
                     "sample_id": int(run.sample_ids[i]), "labels": ", ".join(positives),
                     "label": first, "domain": run.domain_of(first), "abnormal": status}
            if options.include_text:
                point["report"] = (reports.get(int(run.sample_ids[i])) or "")[:80]
            points.append(point)
        for (label, prompt, _), (a, b) in zip(prompts, text_coords, strict=True):
            points.append({"setting": setting, "pc1": float(a), "pc2": float(b), "kind": "prompt", "label": label,
                           "domain": run.domain_of(label), "labels": prompt, "abnormal": "prompt",
                           "sample_id": None} | ({"report": prompt} if options.include_text else {}))
    color = f"{options.color_by.value}:N"
    return alt.Chart(alt.Data(values=points),
                     title=f"Test-split image embeddings ({options.reduce.upper()}), coloured by {options.color_by}"
                     ).mark_point(filled=True, opacity=0.6).encode(
        x=alt.X("pc1:Q", title="PC 1"), y=alt.Y("pc2:Q", title="PC 2"), color=color,
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=["image", "prompt"], range=["circle", "diamond"])),
        size=alt.condition(alt.datum.kind == "prompt", alt.value(140), alt.value(18)),
        tooltip=["sample_id:Q", "labels:N", *(["report:N"] if options.include_text else []), "kind:N"],
    ).properties(width=300, height=260).facet(facet=alt.Facet("setting:N", title=None), columns=3)


def gradcam_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Per setting and label: the pointing game, CheXlocalize's hit rate and mIoU of the trained model
    against the chance level and a random-weights model, the human readers' agreement as a band with
    the model on the same held-out references beside it (where several readers annotated the images),
    and the trained model by lesion-size tercile, with 95 % bootstrap intervals, as `embedstore
    gradcam validate` stored them."""
    import altair as alt

    dataset = resolve_dataset(store, options.data)
    with store.reader() as con:
        rows = queries.fetch_arrow(con, "gradcam_summary", dataset=dataset).to_pylist()
    rows = [r for r in rows if not options.runs or r["run_id"] in options.runs]
    if not rows:
        raise InputError("no Grad-CAM figures are stored yet; `embedstore gradcam validate` writes them")
    order = ["trained model", "random weights", "chance", "model, held-out references", "small lesions",
             "medium lesions", "large lesions"]
    color = alt.Color("figure:N", title=None, scale=alt.Scale(
        domain=[*order, "human readers"],
        range=["#d62728", "#7f7f7f", "#1f77b4", "#9467bd", "#ff9896", "#e377c2", "#8c564b", "#2ca02c"]))
    y = alt.Y("label:N", title=None, sort=None)
    x = alt.X("value:Q", title=None, scale=alt.Scale(domain=[0, 1]))
    human = alt.datum.figure == "human readers"
    band = alt.Chart().transform_filter(human).mark_rect(opacity=0.25).encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1])), x2="ci_high:Q", y=y, color=color)
    human_point = alt.Chart().transform_filter(human).mark_tick(thickness=2).encode(x=x, y=y, color=color)
    offset = alt.YOffset("figure:N", sort=order)
    rules = alt.Chart().transform_filter(~human).mark_rule().encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1])), x2="ci_high:Q", y=y, color=color, yOffset=offset)
    points = alt.Chart().transform_filter(~human).mark_point(filled=True, size=40).encode(
        x=x, y=y, color=color, yOffset=offset,
        tooltip=["setting:N", "label:N", "panel:N", "figure:N", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"), "maps:Q"])
    return alt.layer(band, human_point, rules, points, data=alt.Data(values=rows)).properties(width=220).facet(
        row=alt.Row("setting:N", title=None), column=alt.Column("panel:N", title=None, sort=["pointing game",
                                                                                            "hit rate", "mIoU"]),
        title="Grad-CAM localisation vs chance, a random-weights model and the human readers (band)")


def calibration_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Reliability diagrams (stored `calibration.reliability` bins): per label, the observed frequency
    against the mean probability of each of 15 equal-width bins, point size = samples in the bin, the
    diagonal = perfect calibration; one small multiple per label, colour per setting."""
    import altair as alt

    points = []
    for row in _metric_rows(store, options, ["calibration.reliability"]):
        params = json.loads(row["params"])
        for point in params.get("bins", []):
            points.append({"setting": row["setting"], "protocol": row["protocol"], "label": row["label"],
                           "probability": point["probability"], "observed": point["observed"],
                           "samples": point["count"], "ECE": row["value"],
                           "probability_is": params.get("probability", "")})
    if not points:
        raise InputError("no stored reliability bins; run `embedstore analyze` first")
    diagonal = alt.Chart(alt.Data(values=[{"x": 0, "y": 0}, {"x": 1, "y": 1}])).mark_line(
        color="grey", strokeDash=[3, 3]).encode(x="x:Q", y="y:Q")
    curves = alt.Chart().mark_line(point=True).encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="mean predicted probability"),
        y=alt.Y("observed:Q", scale=alt.Scale(domain=[0, 1]), title="observed frequency"),
        color=alt.Color("setting:N"), size=alt.Size("samples:Q", title="samples in bin"),
        tooltip=["setting:N", "protocol:N", "label:N", alt.Tooltip("probability:Q", format=".3f"),
                 alt.Tooltip("observed:Q", format=".3f"), "samples:Q", alt.Tooltip("ECE:Q", format=".3f"),
                 "probability_is:N"])
    return alt.layer(diagonal, curves, data=alt.Data(values=points)).properties(width=150, height=150).facet(
        facet=alt.Facet("label:N", title=None), columns=5,
        title="Reliability (test split, 15 equal-width bins; dashed: perfect calibration)")


def comparisons_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Forest plot of `analyze --compare`: per pair of settings and figure, the difference B − A and its
    paired 95 % interval, with the zero line (whole-split figures; per-label ones are in `metrics`)."""
    import altair as alt

    with store.reader() as con:
        rows = [row for row in queries.fetch_arrow(con, "comparisons").to_pylist()
                if row["split"] == "test" and row["label"] is None and (not options.runs or row["run_b"] in options.runs)
                and (options.protocol is None or row["protocol"] == options.protocol)]
    if not rows:
        raise InputError("no stored comparisons to draw; run `embedstore analyze --compare` first")
    for row in rows:
        row.update({key: None for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)})
        row["comparison"] = f"{row['mode_b']} − {row['mode_a'] or row['run_a']}"
    base = alt.Chart().encode(y=alt.Y("metric:N", title=None))
    intervals = base.mark_rule().encode(x=alt.X("ci_low:Q", title="difference B − A"), x2="ci_high:Q")
    points = base.mark_point(filled=True).encode(
        x="difference:Q", tooltip=["comparison:N", "protocol:N", "metric:N", alt.Tooltip("a:Q", format=".3f"),
                                   alt.Tooltip("b:Q", format=".3f"), alt.Tooltip("difference:Q", format=".3f"),
                                   alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"),
                                   alt.Tooltip("delong_p:Q", format=".3g")])
    zero = alt.Chart(alt.Data(values=[{"zero": 0}])).mark_rule(strokeDash=[3, 3], color="grey").encode(x="zero:Q")
    return alt.layer(zero, intervals, points, data=alt.Data(values=rows)).properties(width=260, height=120).facet(
        row=alt.Row("comparison:N", title=None), column=alt.Column("protocol:N", title=None),
        title="Paired comparisons of the settings (test split, 95 % paired intervals)")


def prompts_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """Prompt sensitivity of zero-shot runs (stored `prompt_sensitivity.*` rows): per label, and for the
    macro mean, each prompt style's AUROC as a point and the sweep's min–max range as a rule; one panel
    per sweep (model, dataset, protocol extracted under) and protocol analysed under."""
    import altair as alt

    with store.reader() as con:
        rows = [row for row in queries.fetch_arrow(con, "prompt_sensitivity").to_pylist()
                if row["split"] == "test" and (not options.runs or row["run_id"] in options.runs)
                and (options.protocol is None or row["protocol"] == options.protocol)]
    if not rows:
        raise InputError("no stored prompt sensitivity to draw; extract zs runs with `--prompts all` and run "
                         "`embedstore analyze` first")
    rows = _with_positions(store, rows)
    for row in rows:
        row.update({key: None for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)})
        if row["label"] is None:
            row["label"], row["position"] = "macro AUROC", -1
        row["panel"] = f"{row['sweep']} — {row['protocol']} protocol"
    base = alt.Chart().encode(y=alt.Y("label:N", sort=_BY_POSITION, title=None))
    ranges = base.mark_rule(color="grey").encode(x=alt.X("auroc_min:Q", title="AUROC (test split)"), x2="auroc_max:Q")
    points = base.mark_point(filled=True, size=50).encode(
        x="auroc:Q", color=alt.Color("style:N", title="prompt style"),
        tooltip=["style:N", "label:N", "run_id:N", alt.Tooltip("auroc:Q", format=".3f"), "rank:Q",
                 alt.Tooltip("auroc_min:Q", format=".3f"), alt.Tooltip("auroc_max:Q", format=".3f"),
                 alt.Tooltip("auroc_sd:Q", format=".3f"), alt.Tooltip("f1:Q", format=".3f")])
    return alt.layer(ranges, points, data=alt.Data(values=rows)).properties(width=360).facet(
        row=alt.Row("panel:N", title=None),
        title="Prompt sensitivity of zero-shot runs: AUROC per prompt style (rule: min–max across styles)")


def drift_chart(store: Store, options: ChartOptions) -> alt.TopLevelMixin:
    """The newest stored `embedstore drift` pair (of `--runs`, or of the dataset's runs): both sides'
    image embeddings on one projection fitted on them together (PCA, or UMAP), coloured by side, at
    most `max_points` a side (the subsample `drift` drew, cut); the title's figures are the stored ones."""
    import altair as alt

    from embedstore.analyses.drift import latest_pair, projection_sides

    pair = latest_pair(store, options.runs, None if options.runs else resolve_dataset(store, options.data))
    sides = projection_sides(store, pair, options.max_points)
    coords, _ = REDUCERS[options.reduce](np.concatenate([s.vectors for s in sides]),
                                         np.zeros((0, sides[0].vectors.shape[1])), options.seed)
    points, start = [], 0
    for role, side in zip(("from", "to"), sides, strict=True):
        for position, (a, b) in zip(side.kept, coords[start:start + len(side.kept)], strict=True):
            points.append({"side": f"{role}: {side.name}", "pc1": float(a), "pc2": float(b),
                           "sample_id": int(side.run.sample_ids[position])})
        start += len(side.kept)
    figures = pair.figures

    def shown(metric: str, text: str) -> str:
        row = figures.get(metric)
        if row is None:
            return ""
        interval = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row["ci_low"] is not None else ""
        return f"{text} {row['value']:.3g}{interval}"

    parts = [shown("mmd2", "MMD²"), shown("mmd_p", "p"), shown("c2st_auroc", "C2ST AUROC"),
             shown("centroid_cosine", "centroid cosine")]
    title = [f"Domain shift {pair.from_side} → {pair.to_side} (run {pair.run_id}, {options.reduce.upper()} of both)",
             ", ".join(part for part in parts if part)]
    return alt.Chart(alt.Data(values=points), title=title).mark_point(filled=True, opacity=0.5, size=18).encode(
        x=alt.X("pc1:Q", title=f"{options.reduce.upper()} 1"), y=alt.Y("pc2:Q", title=f"{options.reduce.upper()} 2"),
        color=alt.Color("side:N", title=None),
        tooltip=["side:N", "sample_id:Q"],
    ).properties(width=420, height=360)


#: `embedstore chart KIND`.
CHARTS: dict[ChartKind, Callable[[Store, ChartOptions], alt.TopLevelMixin]] = {
    ChartKind.LABELS: labels_chart,
    ChartKind.SEPARABILITY: separability_chart,
    ChartKind.PROJECTION: projection_chart,
    ChartKind.METRICS: metrics_chart,
    ChartKind.PER_LABEL: per_label_chart,
    ChartKind.THRESHOLDS: thresholds_chart,
    ChartKind.NEIGHBORS: neighbors_chart,
    ChartKind.CALIBRATION: calibration_chart,
    ChartKind.COMPARISONS: comparisons_chart,
    ChartKind.GRADCAM: gradcam_chart,
    ChartKind.DRIFT: drift_chart,
    ChartKind.PROMPTS: prompts_chart,
}


@dataclass(frozen=True)
class ChartFiles:
    kind: str
    html: Path
    png: Path
    spec: Path


def chart_spec(store: Store, kind: ChartKind | str, options: ChartOptions) -> dict[str, Any]:
    """The Vega-Lite spec of one chart kind, data inlined."""
    spec: dict[str, Any] = CHARTS[parse(ChartKind, kind, "chart kind")](store, options).to_dict()
    return spec


def save_chart(spec: dict[str, Any], kind: str, out: Path) -> ChartFiles:
    """Write `<kind>.html` (self-contained: Vega inlined, every string escaped for the page), `<kind>.png`
    and `<kind>.vl.json`."""
    import vl_convert

    out.mkdir(parents=True, exist_ok=True)
    files = ChartFiles(kind, out / f"{kind}.html", out / f"{kind}.png", out / f"{kind}.vl.json")
    html = chart_page(f"embedstore chart — {kind}", spec)
    png = vl_convert.vegalite_to_png(spec, scale=2)
    for path, data in ((files.html, html.encode()), (files.png, png), (files.spec, json.dumps(spec).encode())):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return files
