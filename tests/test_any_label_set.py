"""No hidden CheXpert-14: analyses, charts and the report work on any label set, and group labels by the
domains the store holds (label_names.domain; the normal label is the one whose domain is `Normal`; a
label the store does not name is `Other`). Datasets: NIH-style names (`Effusion`, `Infiltration`,
`Nodule`, `No Finding`) and VinDr-style ones (`No finding`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.localisation import MapFigures, MapRecord, localised_labels, summarise
from embedstore.analyses.rundata import load_run
from embedstore.analyses.study import AnalyzeConfig, analyze
from embedstore.choices import ChartKind
from embedstore.extract import ExtractConfig, extract
from embedstore.ingest import IngestConfig, ingest
from embedstore.label_sets import label_set
from embedstore.labels import LOCALISED_GROUP
from embedstore.rendering.charts import ChartOptions, chart_spec
from embedstore.rendering.report import stored_analyses, write_report
from embedstore.rendering.tables import detail_tables
from embedstore.store import Store

TOL = 1e-9

#: Each dataset's labels with the domain (and CheXpert counterpart) the store is given for them before
#: ingest, as a label set's ingest registers them; a label missing here is registered by ingest as `Other`.
LABEL_SETS: dict[str, dict[str, tuple[str, str | None]]] = {
    "nih": {label: (label_set("nih14").domain(label), label_set("nih14").chexpert.get(label))
            for label in ("Effusion", "Infiltration", "Nodule", "No Finding")},
    "vindr": {"Aortic enlargement": ("Cardiovascular", None), "Pleural effusion": ("Pulmonary", "Pleural Effusion"),
              "Nodule/Mass": ("Pulmonary", "Lung Lesion"), "Other lesion": ("Other", None),
              "No finding": ("Normal", "No Finding")},
}
EXPECTED_DOMAINS = {
    "nih": {"Pulmonary": ["Effusion", "Infiltration", "Nodule"], "Normal": ["No Finding"]},
    "vindr": {"Cardiovascular": ["Aortic enlargement"], "Pulmonary": ["Pleural effusion", "Nodule/Mass"],
              "Other": ["Other lesion"], "Normal": ["No finding"]},
}
#: Labels registered by ingest itself (not given beforehand): the manifest's label set does not name them.
REGISTERED_BY_INGEST = {"Other lesion"}


def _write_dataset(folder: Path, labels: list[str], normal: str) -> Path:
    """30 tiny images, split 12/8/10 by a `split` column; each finding positive at random (seeded), the
    normal label positive exactly where no finding is."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    findings = [label for label in labels if label != normal]
    rows = []
    for i in range(30):
        values = {label: int(rng.random() < 0.35) for label in findings}
        if i % 10 in (0, 1):  # every split has both classes of every finding
            values = dict.fromkeys(findings, 1 - i % 2)
        values[normal] = int(not any(values.values()))
        pixels = rng.integers(0, 255, size=(32, 32), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        rows.append([f"{i:02d}.png", "train" if i < 12 else "val" if i < 20 else "test",
                     *(values[label] for label in labels)])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "split", *labels], *rows])
    return manifest


@pytest.fixture(scope="module", params=["nih", "vindr"])
def label_set_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    native_model: str) -> tuple[str, Store]:
    """A store holding one dataset of the label set, with a zs and two lp runs analysed under both protocols."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(folder / "cache"))
        store, _ = Store.init(folder / "store")
        labels = list(LABEL_SETS[name])
        normal = next(label for label, (domain, _) in LABEL_SETS[name].items() if domain == "Normal")
        with store.writer("test") as writer, writer.transaction() as con:
            start = con.execute("SELECT max(position) + 1 FROM label_names").fetchone()[0]
            known = {row[0] for row in con.execute("SELECT label FROM label_names").fetchall()}
            for offset, (label, (domain, chexpert)) in enumerate(LABEL_SETS[name].items()):
                if label not in known and label not in REGISTERED_BY_INGEST:
                    con.execute("INSERT INTO label_names VALUES (?, ?, ?, ?)", [label, start + offset, domain, chexpert])
        ingest(store, IngestConfig(path=_write_dataset(folder / "data", labels, normal), name=name))
        for mode, protocol in (("zs", "study"), ("lp", "study"), ("lp", "multilabel")):
            extract(store, ExtractConfig(mode=mode, model=native_model, data=name, protocol=protocol, epochs=1,
                                         encode_batch_size=64))
        analyze(store, AnalyzeConfig(data=name, bootstrap=10))
    return name, store


def test_domains_and_the_normal_label_come_from_the_store(label_set_store: tuple[str, Store]) -> None:
    name, store = label_set_store
    with store.reader() as con:
        run_ids = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
    for run_id in run_ids:
        run = load_run(store, run_id)
        grouped = {domain: [run.labels[j] for j in columns] for domain, columns in run.domains.items()}
        assert grouped == EXPECTED_DOMAINS[name]
        assert run.normal_label == EXPECTED_DOMAINS[name]["Normal"][0]
    with store.reader() as con:
        stored = {(metric, label) for metric, label in con.execute(
            "SELECT DISTINCT metric, label FROM metrics WHERE metric LIKE 'domain_%'").fetchall()}
    assert {label for metric, label in stored if metric == "domain_macro_f1"} == set(EXPECTED_DOMAINS[name])
    assert {label for metric, label in stored if metric == "domain_positives"} == set(EXPECTED_DOMAINS[name])


def test_abnormal_merges_every_label_but_the_stored_normal_one(label_set_store: tuple[str, Store]) -> None:
    name, store = label_set_store
    with store.reader() as con:
        run_id = con.execute("SELECT run_id FROM runs WHERE mode = 'lp' AND protocol = 'multilabel'").fetchone()[0]
        auroc, f1 = con.execute("SELECT max(value) FILTER (WHERE metric = 'abnormal_auroc'), "
                                "max(value) FILTER (WHERE metric = 'abnormal_f1') FROM metrics "
                                "WHERE run_id = ? AND protocol = 'multilabel'", [run_id]).fetchone()
    run = load_run(store, run_id)
    normal = EXPECTED_DOMAINS[name]["Normal"][0]
    findings = [j for j, label in enumerate(run.labels) if label != normal]
    test = run.splits == "test"
    truth = run.targets[test][:, findings].max(axis=1)
    score = run.scores[test][:, findings].max(axis=1)
    assert auroc == pytest.approx(roc_auc_score(truth, score), abs=TOL)
    with_normal = roc_auc_score(truth, run.scores[test].max(axis=1))
    assert abs(with_normal - auroc) > 1e-6 or np.array_equal(score, run.scores[test].max(axis=1))
    analysis = next(a for a in stored_analyses(store, [run_id]) if a.protocol == "multilabel")
    thresholds = np.array([analysis.figure("threshold", label).value for label in run.labels])
    predicted = (run.scores[test] >= thresholds)[:, findings].max(axis=1)
    assert f1 == pytest.approx(f1_score(truth, predicted, zero_division=0), abs=TOL)


#: Charts of figures that `analyze` alone does not store.
NEEDS_A_COMMAND = {ChartKind.GRADCAM, ChartKind.COMPARISONS, ChartKind.DRIFT, ChartKind.PROMPTS}


def test_charts_and_the_report_render_with_the_stored_domains(label_set_store: tuple[str, Store],
                                                            tmp_path: Path) -> None:
    name, store = label_set_store
    for kind in ChartKind:
        if kind in NEEDS_A_COMMAND:  # each needs its own command (or a prompt sweep) first
            continue
        spec = chart_spec(store, kind, ChartOptions(data=name))
        assert spec, kind
    projection = chart_spec(store, ChartKind.PROJECTION, ChartOptions(data=name, color_by="domain"))
    points = [v for v in projection["datasets"].values() for v in v] if "datasets" in projection else []
    points = points or projection["data"]["values"]
    domain_of = {label: domain for domain, labels in EXPECTED_DOMAINS[name].items() for label in labels}
    for point in points:
        if point["kind"] == "prompt":
            assert point["domain"] == domain_of[point["label"]]
        elif point["labels"] == EXPECTED_DOMAINS[name]["Normal"][0]:
            assert point["abnormal"] == "normal" and point["domain"] == "Normal"
    assert any(p["abnormal"] == "normal" for p in points) and any(p["abnormal"] == "abnormal" for p in points)
    with store.reader() as con:
        run_ids = [r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()]
    analyses = stored_analyses(store, run_ids)
    for protocol in ("study", "multilabel"):
        per_domain = detail_tables(analyses, protocol)["per domain"]
        assert set(per_domain["domain"].to_list()) == set(EXPECTED_DOMAINS[name])
    report = write_report(store, tmp_path / "report.html", data=name)
    html = report.path.read_text()
    assert set(report.skipped) == NEEDS_A_COMMAND
    assert len(report.charts) == len(ChartKind) - len(NEEDS_A_COMMAND)
    for domain in EXPECTED_DOMAINS[name]:
        assert f">{domain}<" in html


def test_localised_findings_follow_the_stored_chexpert_counterpart(label_set_store: tuple[str, Store]) -> None:
    name, store = label_set_store
    labels = list(LABEL_SETS[name])
    expected = {"nih": ("Effusion", "Nodule"), "vindr": ("Pleural effusion", "Nodule/Mass")}[name]
    assert localised_labels(store, labels) == expected
    figures = MapFigures(True, 0.1, 0.5, 0.2, 0.1, 0.05)
    records = [MapRecord(i, label, figures, None, None) for i, label in enumerate(labels * 2)]
    rows = summarise(records, AnalysisOptions(bootstrap=0), localised=localised_labels(store, labels))
    group = next(r for r in rows if r.label == LOCALISED_GROUP and r.metric == "gradcam.pointing_game")
    assert group.params["n_maps"] == 2 * len(expected)
