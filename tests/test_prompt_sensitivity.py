"""Prompt styles, the `--prompts all` sweep (images encoded once, the same scores as separate runs),
custom prompt files, the stored `prompt_sensitivity.*` figures against a scikit-learn brute force on
the runs' scores (ties included) and the chart drawn from them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import rankdata
from sklearn.metrics import f1_score, roc_auc_score

import embedstore.extract as extract_module
from embedstore import queries
from embedstore.choices import PromptChoice, PromptSet
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.prompts import PROMPT_SETS, build_prompts, fallback_labels, lay_phrases, read_prompt_file
from embedstore.store import Store
from tests.conftest import SYNTHETIC_N

YAML_PROMPTS = """\
Cardiomegaly: enlarged cardiac silhouette
Edema:
  - pulmonary edema
  - fluid in the lungs
Pneumothorax:
  positive: [pneumothorax, collapsed lung]
  negative: no pneumothorax
"""

CSV_PROMPTS = """\
label,prompt,negative
Cardiomegaly,enlarged cardiac silhouette,
Edema,pulmonary edema,
Edema,fluid in the lungs,
Pneumothorax,pneumothorax,no pneumothorax
Pneumothorax,collapsed lung,
"""


# ---------------------------------------------------------------------------------------------
# Styles and prompt files
# ---------------------------------------------------------------------------------------------

def test_every_style_builds_its_prompts() -> None:
    assert set(PROMPT_SETS) == set(PromptSet) and len(PromptSet) >= 6
    assert {c.value for c in PromptChoice} == {s.value for s in PromptSet} | {"all"}

    def texts(style: str, label: str) -> list[str]:
        return [p.text for p in build_prompts(style, [label])]

    assert texts("names", "Edema") == ["Edema"]
    assert texts("posneg", "Edema") == ["Edema", "no edema"]
    assert texts("templates", "Lung Opacity")[2] == "a chest x-ray showing lung opacity"
    assert texts("consistent", "Pleural Effusion") == ["findings consistent with pleural effusion"]
    assert texts("consistent", "ILD") == ["findings consistent with ILD"]
    report = texts("report", "Pleural_Thickening")
    assert "The chest radiograph demonstrates pleural thickening." in report and len(report) >= 3
    assert texts("lay", "Cardiomegaly") == list(lay_phrases()["Cardiomegaly"])
    assert texts("lay", "Unheard Of") == ["Unheard Of"]  # no entry: the label's own name
    assert all(p.positive for style in ("consistent", "report", "lay") for p in build_prompts(style, ["Edema"]))
    assert fallback_labels("lay", ["Edema", "Unheard Of"]) == ["Unheard Of"]
    assert fallback_labels("templates", ["Unheard Of"]) is None
    from embedstore.label_sets import label_sets

    covered = set(lay_phrases())
    for name in ("chexpert", "nih14", "vindr-cxr"):
        assert set(label_sets()[name].labels) <= covered, name


def test_yaml_and_csv_prompt_files_give_the_same_prompts(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(YAML_PROMPTS)
    (tmp_path / "mine.csv").write_text(CSV_PROMPTS)
    yaml_file, csv_file = read_prompt_file(tmp_path / "mine.yaml"), read_prompt_file(tmp_path / "mine.csv")
    assert yaml_file.name == csv_file.name == "custom:mine"
    assert yaml_file.positives == csv_file.positives and yaml_file.negatives == csv_file.negatives
    labels = ["Cardiomegaly", "Edema", "Fracture", "Pneumothorax"]
    built = [(p.label, p.text, p.positive) for p in build_prompts(yaml_file.name, labels, yaml_file)]
    assert built == [("Cardiomegaly", "enlarged cardiac silhouette", True), ("Edema", "pulmonary edema", True),
                     ("Edema", "fluid in the lungs", True), ("Fracture", "Fracture", True),
                     ("Pneumothorax", "pneumothorax", True), ("Pneumothorax", "collapsed lung", True),
                     ("Pneumothorax", "no pneumothorax", False)]
    assert fallback_labels(yaml_file.name, labels, yaml_file) == ["Fracture"]
    import hashlib

    assert yaml_file.sha256 == hashlib.sha256((tmp_path / "mine.yaml").read_bytes()).hexdigest()


@pytest.mark.parametrize("name, text, where", [
    ("a.csv", "label,prompt\nEdema,fluid\n,orphan prompt\n", "a.csv:3: the label is empty"),
    ("b.csv", "label,prompt,negative\nEdema,fluid,\nEdema,,\n", "b.csv:3: label 'Edema' has no prompt"),
    ("c.csv", "label,text\nEdema,fluid\n", "c.csv:1: the header must be label,prompt[,negative]"),
    ("d.csv", "label,prompt\nEdema,fluid,extra\n", "d.csv:2: 3 columns"),
    ("e.csv", "label,prompt,negative\nEdema,fluid,\nAtelectasis,,no atelectasis\n",
     "e.csv:3: label 'Atelectasis' has negative prompts but no positive one"),
    ("f.yaml", "Edema: fluid\nAtelectasis:\n  - collapse\n  - 3\n", "f.yaml:2: label 'Atelectasis'"),
    ("g.yaml", "Edema: fluid\nAtelectasis: {positive: collapse, other: x}\n", "g.yaml:2: label 'Atelectasis': unknown key"),
    ("h.yaml", "- Edema\n- fluid\n", "h.yaml:1: expected a mapping"),
    ("i.yaml", "Edema: [fluid\nAtelectasis: x\n", "i.yaml:"),
    ("j.yaml", "Edema: fluid\nAtelectasis:\n", "j.yaml:2: label 'Atelectasis'"),
    ("k.txt", "Edema,fluid\n", "k.txt: suffix '.txt'"),
])
def test_a_bad_prompt_file_is_one_error_naming_file_and_row(tmp_path: Path, name: str, text: str, where: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as refused:
        read_prompt_file(tmp_path / name)
    message = str(refused.value)
    assert where in message and "\n" not in message and refused.value.parameter == "prompts_file", message


def test_yaml_prompt_files_are_read_as_plain_data_only(tmp_path: Path) -> None:
    (tmp_path / "evil.yaml").write_text("Edema: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(InputError, match="evil.yaml:1"):
        read_prompt_file(tmp_path / "evil.yaml")


def test_a_prompts_file_is_for_zs_only_and_not_beside_a_style(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(YAML_PROMPTS)
    with pytest.raises(InputError, match="zs runs only"):
        ExtractConfig(mode="lp", model="demo", data="syn", prompts_file=tmp_path / "mine.yaml")
    with pytest.raises(InputError, match="not both"):
        ExtractConfig(mode="zs", model="demo", data="syn", prompts="names", prompts_file=tmp_path / "mine.yaml")
    config = ExtractConfig(mode="zs", model="demo", data="syn", prompts_file=tmp_path / "mine.yaml")
    assert config.prompt_set == "custom:mine"
    assert ExtractConfig(mode="zs", model="demo", data="syn", protocol="study").prompt_set is PromptSet.NAMES


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

SWEEP_STYLES = [*(s.value for s in PromptSet), "custom:mine"]


#: The runs whose reports the sweep fixture encoded.
REPORT_ENCODES: list[str] = []


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path, native_model: str
          ) -> Iterator[tuple[Store, dict[str, str], int, Path]]:
    """A store with the synthetic set and one `--prompts all` sweep (study protocol, with a custom YAML
    style), analysed (no bootstrap); the images encoded per encode call are counted."""
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.prompt_sweep import extract_prompt_sweep

    folder = tmp_path_factory.mktemp("sweep")
    prompts_file = folder / "mine.yaml"
    prompts_file.write_text(YAML_PROMPTS)
    encoded = []
    original = extract_module.encode_batch

    def counting(visual, images, *args, **kwargs):  # type: ignore[no-untyped-def]
        encoded.append(len(images))
        return original(visual, images, *args, **kwargs)

    original_reports = extract_module.encode_reports

    def counting_reports(ctx):  # type: ignore[no-untyped-def]
        REPORT_ENCODES.append(ctx.run_id)
        return original_reports(ctx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract_module, "encode_reports", counting_reports)
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        patch.setattr(extract_module, "encode_batch", counting)
        store, _ = Store.init(folder / "store")
        ingest(store, IngestConfig(path=synthetic_dir, name="syn"))
        runs = extract_prompt_sweep(store, ExtractConfig(mode="zs", model=native_model, data="syn", protocol="study",
                                                         encode_batch_size=64, prompts_file=prompts_file))
        analyze(store, AnalyzeConfig(protocol="study", bootstrap=0))
        yield store, {run.prompt_set: run.result.run_id for run in runs}, sum(encoded), prompts_file


def _config(store: Store, run_id: str) -> dict:
    with store.reader() as con:
        return json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()[0])


def _scores(store: Store, run_id: str) -> np.ndarray:
    with store.reader() as con:
        rows = con.execute("SELECT sample_id, label, logit FROM scores WHERE run_id = ? ORDER BY sample_id",
                           [run_id]).fetchall()
    labels = _config(store, run_id)["labels"]
    ids = sorted({int(r[0]) for r in rows})
    matrix = np.full((len(ids), len(labels)), np.nan)
    for sample_id, label, logit in rows:
        matrix[ids.index(int(sample_id)), labels.index(label)] = logit
    return matrix


def test_the_sweep_encodes_the_images_once_and_makes_one_complete_run_per_style(
        swept: tuple[Store, dict[str, str], int, Path]) -> None:
    store, runs, encoded, prompts_file = swept
    assert list(runs) == SWEEP_STYLES and len(set(runs.values())) == len(SWEEP_STYLES)
    assert encoded == SYNTHETIC_N  # the first run encoded every image once; the others copied them
    first = runs["names"]
    with store.reader() as con:
        stored = dict(con.execute("SELECT run_id, prompt_set FROM runs WHERE status = 'complete'").fetchall())
        texts = {run_id: {r[0] for r in con.execute("SELECT prompt FROM text_embeddings WHERE run_id = ?",
                                                    [run_id]).fetchall()} for run_id in runs.values()}
    for style, run_id in runs.items():
        assert stored[run_id] == style
        config = _config(store, run_id)
        assert config["embeddings_from"] == (None if run_id == first else first)
        assert set(config["prompts"]) == texts[run_id]
    custom = _config(store, runs["custom:mine"])
    assert custom["prompts_file"]["sha256"] == read_prompt_file(prompts_file).sha256
    assert custom["prompts_sha256"] == custom["prompts_file"]["sha256"]
    assert "Fracture" in custom["prompt_fallbacks"] and "Edema" not in custom["prompt_fallbacks"]
    assert {"pulmonary edema", "fluid in the lungs", "no pneumothorax"} <= texts[runs["custom:mine"]]
    assert _config(store, runs["lay"])["prompt_fallbacks"] == []  # every CheXpert label has lay phrases
    assert "prompt_fallbacks" not in _config(store, runs["report"])
    # The reports are encoded once too: every later run stores the first run's report embeddings.
    with store.reader() as con:
        reports = {run_id: con.execute("SELECT sample_id, embedding, truncated FROM report_embeddings WHERE run_id = ? "
                                       "ORDER BY sample_id", [run_id]).fetchall() for run_id in runs.values()}
    assert REPORT_ENCODES == [first]
    assert reports[first] and all(rows == reports[first] for rows in reports.values())
    assert all(_config(store, r)["report_embeddings"] == _config(store, first)["report_embeddings"] for r in runs.values())


def test_the_sweep_scores_as_separate_runs_do(swept: tuple[Store, dict[str, str], int, Path],
                                              synthetic_store: Store, native_model: str) -> None:
    store, runs, _, prompts_file = swept
    for options in ({"prompts": "report"}, {"prompts": "lay"}, {"prompts_file": prompts_file}):
        alone = extract(synthetic_store, ExtractConfig(mode="zs", model=native_model, data="syn", protocol="study",
                                                       encode_batch_size=64, **options))
        assert alone.embeddings_from is None  # encoded by itself
        style = str(options.get("prompts", "custom:mine"))
        assert _config(synthetic_store, alone.run_id)["prompts"] == _config(store, runs[style])["prompts"]
        np.testing.assert_allclose(_scores(synthetic_store, alone.run_id), _scores(store, runs[style]),
                                   rtol=1e-5, atol=1e-6)


def test_a_custom_run_rebuilds_its_zero_shot_head_from_the_config(swept: tuple[Store, dict[str, str], int, Path]
                                                                  ) -> None:
    from embedstore.prompts import custom_prompts, has_negatives

    store, runs, _, _ = swept
    config = _config(store, runs["custom:mine"])
    custom = custom_prompts(config)
    assert custom is not None and custom.name == "custom:mine" and has_negatives("custom:mine", config)
    assert [p.text for p in build_prompts("custom:mine", config["labels"], custom)] == config["prompts"]
    assert custom_prompts(_config(store, runs["names"])) is None


# ---------------------------------------------------------------------------------------------
# Prompt sensitivity figures
# ---------------------------------------------------------------------------------------------

def _quantise_scores(store: Store, run_ids: list[str], levels: int = 4) -> None:
    """Replace each run's scores by a few integer levels (per label, by rank): ties in every column."""
    with store.writer("test") as writer, writer.transaction() as con:
        for run_id in run_ids:
            rows = con.sql("SELECT sample_id, label, logit FROM scores WHERE run_id = ?", params=[run_id]).to_arrow_table()
            logits = rows.column("logit").to_numpy()
            labels = np.array(rows.column("label").to_pylist())
            quantised = np.zeros_like(logits)
            for label in set(labels):
                where = labels == label
                quantised[where] = np.floor(levels * rankdata(logits[where]) / (where.sum() + 1))
            con.execute("DELETE FROM scores WHERE run_id = ?", [run_id])
            con.register("_quantised", pa.table({"sample_id": rows.column("sample_id"), "label": rows.column("label"),
                                                 "logit": pa.array(quantised)}))
            con.execute("INSERT INTO scores SELECT ?, sample_id, label, logit FROM _quantised", [run_id])
            con.unregister("_quantised")


def _copy_scores(store: Store, source: str, target: str) -> None:
    with store.writer("test") as writer, writer.transaction() as con:
        con.execute("DELETE FROM scores WHERE run_id = ?", [target])
        con.execute("INSERT INTO scores SELECT ?, sample_id, label, logit FROM scores WHERE run_id = ?", [target, source])


def _brute_force(store: Store, run_id: str) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Per-label AUROC and F1 of the test split under the study protocol with scikit-learn: row min-max
    scores, threshold 0.5; macro AUROC over labels with both classes, macro-F1 over every label."""
    from embedstore.analyses.rundata import load_run

    run = load_run(store, run_id)
    test = run.split("test")
    raw = run.scores[test]
    scaled = (raw - raw.min(axis=1, keepdims=True)) / (raw.max(axis=1, keepdims=True) - raw.min(axis=1, keepdims=True)
                                                        + 1e-8)
    targets = run.targets[test]
    auroc = {label: float(roc_auc_score(targets[:, j], scaled[:, j])) for j, label in enumerate(run.labels)
             if 0 < targets[:, j].sum() < len(targets)}
    f1 = {label: float(f1_score(targets[:, j], scaled[:, j] >= 0.5, zero_division=0))
          for j, label in enumerate(run.labels)}
    return auroc, f1, float(np.mean(list(auroc.values()))), float(np.mean(list(f1.values())))


def _stored(store: Store, prefix: str = "prompt_sensitivity.") -> dict[tuple[str, str, str | None], float]:
    with store.reader() as con:
        rows = con.execute("SELECT run_id, metric, label, value FROM metrics WHERE starts_with(metric, ?) "
                           "AND protocol = 'study' AND split = 'test'", [prefix]).fetchall()
    return {(run_id, metric, label): value for run_id, metric, label, value in rows}


@pytest.fixture
def tied(swept: tuple[Store, dict[str, str], int, Path], tmp_path: Path) -> tuple[Store, dict[str, str]]:
    """A copy of the sweep's store whose scores are quantised (ties within every label) and whose `report`
    run scores exactly as its `consistent` run (tied styles), analysed again."""
    from embedstore.analyses.study import AnalyzeConfig, analyze

    store, runs, _, _ = swept
    shutil.copytree(store.path, tmp_path / "store")
    copy = Store.open(tmp_path / "store")
    _quantise_scores(copy, list(runs.values()))
    _copy_scores(copy, runs["consistent"], runs["report"])
    analyze(copy, AnalyzeConfig(protocol="study", bootstrap=0))
    return copy, runs


def test_spread_and_ranks_equal_a_brute_force_on_the_runs_scores_with_ties(tied: tuple[Store, dict[str, str]]) -> None:
    store, runs = tied
    figures = {style: _brute_force(store, run_id) for style, run_id in runs.items()}
    stored = _stored(store)
    labels = list(figures["names"][0])
    assert labels and figures["report"] == figures["consistent"]
    for label in [None, *labels]:
        auroc = np.array([figures[s][2] if label is None else figures[s][0][label] for s in runs])
        f1 = np.array([figures[s][3] if label is None else figures[s][1][label] for s in runs])
        ranks = rankdata(-auroc, method="min")
        for (style, run_id), rank in zip(runs.items(), ranks, strict=True):
            for name, values in (("auroc", auroc), ("f1", f1)):
                assert stored[run_id, f"prompt_sensitivity.{name}_min", label] == pytest.approx(values.min(), abs=1e-12)
                assert stored[run_id, f"prompt_sensitivity.{name}_max", label] == pytest.approx(values.max(), abs=1e-12)
                assert stored[run_id, f"prompt_sensitivity.{name}_sd", label] == pytest.approx(np.std(values, ddof=1),
                                                                                               abs=1e-12)
            assert stored[run_id, "prompt_sensitivity.rank", label] == rank, (style, label)
    report, consistent = runs["report"], runs["consistent"]
    assert all(stored[report, "prompt_sensitivity.rank", label] == stored[consistent, "prompt_sensitivity.rank", label]
               for label in [None, *labels])


def test_rank_params_list_the_styles_best_first(tied: tuple[Store, dict[str, str]]) -> None:
    store, runs = tied
    with store.reader() as con:
        params = json.loads(con.execute("SELECT params FROM metrics WHERE metric = 'prompt_sensitivity.rank' AND "
                                        "label IS NULL AND run_id = ?", [runs["names"]]).fetchone()[0])
    assert sorted(params["styles"]) == sorted(SWEEP_STYLES) and params["runs"] == runs
    values = params["values"]
    assert params["ranking"] == sorted(values, key=lambda s: (-values[s], params["styles"].index(s)))
    assert params["style"] == "names" and params["by"] == "macro_auroc"


def test_analysing_again_replaces_the_rows_and_one_run_alone_keeps_its_sweep(
        swept: tuple[Store, dict[str, str], int, Path], tmp_path: Path) -> None:
    from embedstore.analyses.study import AnalyzeConfig, analyze

    store, runs, _, _ = swept
    shutil.copytree(store.path, tmp_path / "store")
    copy = Store.open(tmp_path / "store")
    before = _stored(copy)
    assert before and {run_id for run_id, *_ in before} == set(runs.values())
    analyses = analyze(copy, AnalyzeConfig(protocol="study", bootstrap=0))
    assert _stored(copy) == before  # replaced, not added to
    shown = {r.metric for a in analyses if a.run.run_id == runs["lay"] for r in a.rows}
    assert {"prompt_sensitivity.auroc_sd", "prompt_sensitivity.rank"} <= shown
    from embedstore.rendering.tables import prompt_sensitivity_table

    table = prompt_sensitivity_table(analyses, "study").to_dicts()
    macro = table[0]
    assert macro["label"] == "macro" and macro["styles"] == len(SWEEP_STYLES)
    best = {style for style, run_id in runs.items() if before[run_id, "prompt_sensitivity.rank", None] == 1}
    assert set(macro["best style (AUROC)"].split(", ")) == best
    low, high = before[runs["names"], "prompt_sensitivity.auroc_min", None], before[runs["names"],
                                                                                  "prompt_sensitivity.auroc_max", None]
    assert macro["AUROC min–max"] == f"{low:.3f}–{high:.3f}"
    analyze(copy, AnalyzeConfig(runs=(runs["lay"],), protocol="study", bootstrap=0))
    assert _stored(copy) == before  # the other runs' stored figures complete the sweep
    with copy.writer("test") as writer, writer.transaction() as con:  # a sweep of one style is no sweep
        con.execute("DELETE FROM metrics WHERE run_id <> ? AND NOT starts_with(metric, 'prompt_sensitivity.')",
                    [runs["lay"]])
    analyze(copy, AnalyzeConfig(runs=(runs["lay"],), protocol="study", bootstrap=0))
    assert _stored(copy) == {}


def test_the_chart_draws_the_stored_rows(swept: tuple[Store, dict[str, str], int, Path]) -> None:
    from embedstore.rendering.charts import ChartOptions, chart_spec
    from tests.stored import chart_values

    store, runs, _, _ = swept
    stored = _stored(store)
    with store.reader() as con:
        aurocs = dict(((r[0], r[1]), r[2]) for r in con.execute(
            "SELECT run_id, label, value FROM metrics WHERE metric = 'auroc' AND protocol = 'study' "
            "AND split = 'test'").fetchall())
        table = queries.fetch_arrow(con, "prompt_sensitivity").to_pylist()
    points = [v for v in chart_values(chart_spec(store, "prompts", ChartOptions())) if "auroc_min" in v]
    assert len(points) == len(table) and {p["style"] for p in points} == set(SWEEP_STYLES)
    for point in points:
        label = None if point["label"] == "macro AUROC" else point["label"]
        assert point["auroc_min"] == pytest.approx(stored[point["run_id"], "prompt_sensitivity.auroc_min", label])
        assert point["auroc_max"] == pytest.approx(stored[point["run_id"], "prompt_sensitivity.auroc_max", label])
        assert point["rank"] == stored[point["run_id"], "prompt_sensitivity.rank", label]
        if label is not None:
            assert point["auroc"] == pytest.approx(aurocs[point["run_id"], label])
            assert point["auroc_min"] <= point["auroc"] <= point["auroc_max"]
    assert {p["label"] for p in points} >= {"macro AUROC"}
    with pytest.raises(InputError, match="no stored prompt sensitivity"):
        chart_spec(store, "prompts", ChartOptions(runs=("nope",)))

    from embedstore.rendering.report import write_report

    report = write_report(store, store.path.parent / "report.html", "syn")
    assert "prompts" in report.charts and "chart-prompts" in report.path.read_text()


def test_cli_sweeps_prints_every_run_and_refuses_a_bad_file_in_one_line(
        swept: tuple[Store, dict[str, str], int, Path], native_model: str, run_cli, tmp_path: Path) -> None:
    store, runs, _, prompts_file = swept
    base = ["extract", "--mode", "zs", "--model", native_model, "--data", "syn", "--protocol", "study",
            "--encode-batch-size", "64", "--store", str(store.path)]
    result = run_cli(*base, "--prompts", "all", "--prompts-file", str(prompts_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(SWEEP_STYLES)
    for line, (style, run_id) in zip(lines, runs.items(), strict=True):
        assert line.startswith(f"reused: run {run_id} (prompts {style}; "), line
    bad = tmp_path / "bad.csv"
    bad.write_text("label,prompt\nEdema,fluid\n,orphan\n")
    refused = run_cli(*base, "--prompts", "all", "--prompts-file", str(bad))
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "bad.csv:3: the label is empty" in refused.stderr and "--prompts-file" in refused.stderr
    both = run_cli(*base, "--prompts", "names", "--prompts-file", str(prompts_file))
    assert both.returncode != 0 and "not both" in both.stderr
    analysed = run_cli("analyze", "--protocol", "study", "--bootstrap", "0", "--store", str(store.path))
    assert analysed.returncode == 0, analysed.stderr
    assert "prompt sensitivity (study protocol, test split)" in analysed.stdout


def test_a_prompt_file_must_be_a_small_regular_file_with_text_labels(tmp_path: Path) -> None:
    """A FIFO would block and /dev/zero never end: refused before reading; YAML's `yes:` is a boolean
    and `1:` a number, not a label; a CSV field past csv's limit is one line naming the row."""
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):
        read_prompt_file(fifo)
    (tmp_path / "bools.yaml").write_text("yes: a chest x-ray\n")
    with pytest.raises(InputError, match=r"bools.yaml:1: label True is not text; quote it"):
        read_prompt_file(tmp_path / "bools.yaml")
    (tmp_path / "huge.csv").write_text("label,prompt\nEdema," + "x" * 200_000 + "\n")
    with pytest.raises(InputError, match=r"huge.csv:\d+: not a CSV row"):
        read_prompt_file(tmp_path / "huge.csv")
