"""The Grad-CAM commands: `gradcam` writes overlays, raw maps, the study's grid and provenance
(images drawn as the study drew them, annotations outlined); `gradcam validate` stores localisation,
faithfulness and the sanity check, and they are drawn and reported; the options both commands share
are declared once; bad choices and bad values are one line with exit 2, never a traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from embedstore.analyses.study import AnalyzeConfig, analyze
from embedstore.cam.run import MapsConfig, render_maps
from embedstore.cam.workspace import CamSettings, study_sample
from embedstore.errors import InputError
from embedstore.rendering.report import write_report
from embedstore.store import Store
from tests.browser import check_page


def test_gradcam_command_writes_overlays_raw_maps_the_grid_and_provenance(
        cam_store: tuple[Store, dict[str, str]], tmp_path: Path, run_cli: object) -> None:
    from PIL import Image

    store, runs = cam_store
    out = tmp_path / "maps"
    chosen = [runs["zs-study"], runs["lp-multilabel"], runs["ft-study"]]
    result = run_cli("gradcam", *[a for r in chosen for a in ("--run", r)], "--n", "3", "--top-k", "2",
                     "--out", str(out), "--store", str(store.path))
    assert result.returncode == 0, result.stderr
    with store.reader() as con:
        test_ids = [r[0] for r in con.execute("SELECT sample_id FROM samples WHERE split = 'test' ORDER BY sample_id")
                    .fetchall()]
    expected = [test_ids[i] for i in np.random.RandomState(42).choice(len(test_ids), 3, replace=False)]
    assert [int(p.name) for p in sorted(out.iterdir()) if p.is_dir()] == sorted(expected)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["samples"] == expected
    assert [r["run_id"] for r in provenance["runs"]] == chosen
    assert all(len(r["model_sha256"]) == 64 and r["method"] == "gradcam" and r["device"] and r["versions"]["torch"]
               for r in provenance["runs"])
    for sample in expected:
        for run in chosen:
            maps = sorted((out / str(sample) / run).glob("*.npy"))
            assert len(maps) == 2
            raw = np.load(maps[0])
            assert raw.shape == (48, 48) and 0 <= raw.min() and raw.max() <= 1
            with Image.open(maps[0].with_suffix(".png")) as overlay:
                assert overlay.size == (48, 48)
        with Image.open(out / str(sample) / "grid.png") as grid:
            assert grid.width > grid.height / 2 > 100       # 2 label rows × 3 setting columns


def test_maps_outline_the_expert_annotation(cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path,
                                             tmp_path: Path) -> None:
    from PIL import Image

    store, runs = cam_store
    with store.reader() as con:
        test_files = {r[0]: r[1] for r in con.execute("SELECT filename, sample_id FROM samples WHERE split = 'test'")
                      .fetchall()}
    with open(synthetic_dir / "annotations.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["filename"] in test_files)
    sample, label = test_files[row["filename"]], row["label"]
    plain, outlined = tmp_path / "plain", tmp_path / "outlined"
    for out, boxes in ((plain, None), (outlined, synthetic_dir / "annotations.csv")):
        render_maps(store, MapsConfig(runs=(runs["ft-study"],), out=out, samples=(sample,), labels=(label,),
                                      annotations=boxes))
    slug = label.lower().replace(" ", "_")
    before = np.asarray(Image.open(plain / str(sample) / runs["ft-study"] / f"{slug}.png"))
    after = np.asarray(Image.open(outlined / str(sample) / runs["ft-study"] / f"{slug}.png"))
    changed = np.any(before != after, axis=-1)
    assert changed.any() and (after[changed] == 255).all()           # only the white outline is added
    np.testing.assert_array_equal(np.load(plain / str(sample) / runs["ft-study"] / f"{slug}.npy"),
                                  np.load(outlined / str(sample) / runs["ft-study"] / f"{slug}.npy"))
    assert json.loads((outlined / "provenance.json").read_text())["annotations"]["sha256"]


@pytest.mark.slow
def test_validate_stores_localisation_sanity_and_draws_them(
        cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path, tmp_path: Path, run_cli: object) -> None:
    store, runs = cam_store
    run = runs["ft-study"]
    result = run_cli("gradcam", "validate", "--run", run, "--annotations", str(synthetic_dir / "annotations.csv"),
                     "--masks", str(synthetic_dir / "masks"), "--bootstrap", "100", "--sanity-maps", "4",
                     "--store", str(store.path))
    assert result.returncode == 0, result.stderr
    assert "pointing game" in result.stdout and "randomisation check" in result.stdout
    with open(synthetic_dir / "annotations.csv") as handle:
        annotated = {(r["filename"], r["label"]) for r in csv.DictReader(handle)}
    with store.reader() as con:
        test_files = {r[0]: r[1] for r in con.execute("SELECT filename, sample_id FROM samples WHERE split = 'test'")
                      .fetchall()}
        stored = con.execute("SELECT sample_id, label, pointing_hit, energy_inside, area_share, deletion_auc "
                             "FROM gradcam WHERE run_id = ?", [run]).fetchall()
        metrics = {(m, lab): (v, lo, hi, json.loads(p)) for m, lab, v, lo, hi, p in con.execute(
            "SELECT metric, label, value, ci_low, ci_high, params FROM metrics WHERE run_id = ? AND metric LIKE "
            "'gradcam.%'", [run]).fetchall()}
    assert {(s, label) for s, label, *_ in stored} == {(test_files[f], label) for f, label in annotated
                                                       if f in test_files}
    assert all(0 <= e <= 1 and 0 < a < 1 for *_, e, a, _ in [r[:2] + r[3:] for r in stored])
    value, low, high, params = metrics[("gradcam.pointing_game", None)]
    assert value == pytest.approx(np.mean([r[2] for r in stored])) and low <= value <= high
    assert params["model_sha256"] and params["annotations_sha256"] and params["layer"] == "transformer.resblocks.-3"
    assert ("gradcam.random_weights.pointing_game", None) in metrics and ("gradcam.sanity_flag", None) in metrics
    assert any(m == "gradcam.sanity_spearman" for m, _ in metrics)
    # Revalidating replaces, never duplicates.
    again = run_cli("gradcam", "validate", "--run", run, "--annotations", str(synthetic_dir / "annotations.csv"),
                    "--bootstrap", "0", "--sanity-maps", "2", "--store", str(store.path))
    assert again.returncode == 0, again.stderr
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM gradcam WHERE run_id = ?", [run]).fetchall()[0][0] == len(stored)
    chart = run_cli("chart", "gradcam", "--out", str(tmp_path / "charts"), "--store", str(store.path))
    assert chart.returncode == 0, chart.stderr
    spec = json.loads((tmp_path / "charts" / "gradcam.vl.json").read_text())
    drawn = {(v["figure"], v["label"]): v["value"] for v in spec["data"]["values"]}
    with store.reader() as con:
        stored_now = dict(con.execute("SELECT metric, value FROM metrics WHERE run_id = ? AND label IS NULL AND metric "
                                      "IN ('gradcam.pointing_game', 'gradcam.pointing_chance')", [run]).fetchall())
    assert drawn[("trained model", "all")] == pytest.approx(stored_now["gradcam.pointing_game"])
    assert drawn[("chance", "all")] == pytest.approx(stored_now["gradcam.pointing_chance"])
    check = check_page(tmp_path / "charts" / "gradcam.html", tmp_path / "gradcam.png", tmp_path / "profile")
    assert check.console_errors == [] and check.requests == [] and min(check.marks_per_chart) > 0
    # The report lays out the stored localisation table and the sanity check, and draws the chart.
    analyze(store, AnalyzeConfig(bootstrap=0))
    report = write_report(store, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "gradcam" in report.charts and f"Grad-CAM localisation — {run}" in page
    assert "localised findings" in page and "Model-randomisation check" in page


def test_study_sample_draws_like_pandas_sample() -> None:
    # pandas' DataFrame.sample(n, random_state=s) draws RandomState(s).choice(len, n, replace=False);
    # the legacy generator's choice without replacement is a permutation's prefix.
    assert list(study_sample(572, 15, 42)) == list(np.random.RandomState(42).permutation(572)[:15])
    with pytest.raises(InputError, match="n 20: the split has only 10 images") as error:
        study_sample(10, 20, 42)
    assert "--" not in str(error.value)


def test_gradcam_without_run_is_a_clear_error(run_cli: object, tmp_store: Store) -> None:
    result = run_cli("gradcam", "--store", str(tmp_store.path))
    assert result.returncode == 2 and "needs --run RUN and --out DIR" in result.stderr


@pytest.mark.parametrize("args, option, valid", [
    (["gradcam", "--run", "x", "--out", "maps", "--device", "foo"], "--device", "'auto', 'cpu', 'cuda'"),
    (["gradcam", "validate", "--run", "x", "--annotations", "a.csv", "--device", "foo"], "--device",
     "'auto', 'cpu', 'cuda'"),
    (["gradcam", "--run", "x", "--out", "maps", "--method", "magic"], "--method",
     "'gradcam', 'gradcam++', 'hirescam', 'scorecam', 'eigencam'"),
    (["gradcam", "validate", "--run", "x", "--annotations", "a.csv", "--split", "tset"], "--split",
     "'train', 'val', 'test'"),
])
def test_a_bad_choice_is_one_line_listing_the_valid_values(run_cli: object, tmp_store: Store, tmp_path: Path,
                                                           args: list[str], option: str, valid: str) -> None:
    result = run_cli(*[str(tmp_path / a) if a in ("maps", "a.csv") else a for a in args],
                     "--store", str(tmp_store.path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedstore: error: ")
    assert option in lines[0] and valid in lines[0]


@pytest.mark.parametrize("args, option", [
    (["gradcam", "--run", "x", "--out", "maps", "--steps", "1"], "--steps"),
    (["gradcam", "validate", "--run", "x", "--annotations", "a.csv", "--batch-size", "0"], "--batch-size"),
    (["gradcam", "validate", "--run", "x", "--annotations", "a.csv", "--sanity-maps", "0"], "--sanity-maps"),
    (["gradcam", "--run", "x", "--out", "maps", "--top-k", "0"], "--top-k"),
])
def test_an_out_of_range_number_is_refused_naming_the_option(run_cli: object, tmp_store: Store, tmp_path: Path,
                                                              args: list[str], option: str) -> None:
    result = run_cli(*[str(tmp_path / a) if a in ("maps", "a.csv") else a for a in args],
                     "--store", str(tmp_store.path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0]


def test_a_library_refusal_names_the_option_on_the_command_line(cam_store: tuple[Store, dict[str, str]],
                                                               tmp_path: Path, run_cli: object) -> None:
    store, runs = cam_store
    result = run_cli("gradcam", "--run", runs["zs-study"], "--out", str(tmp_path / "maps"), "--n", "1",
                     "--layer", "transformer.nope", "--device", "cpu", "--store", str(store.path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "embedstore: error: --layer 'transformer.nope': the image tower has no 'nope' there")
    assert not (tmp_path / "maps" / "provenance.json").exists()


def test_the_shared_options_are_the_same_on_both_commands() -> None:
    import typer

    from embedstore.cli.gradcam_cmd import SHARED_OPTIONS, app

    maps = typer.main.get_command(app)                 # typer's own click: a group with `validate`
    validate = maps.commands["validate"]

    def options(command: typer.core.TyperCommand) -> dict[str, tuple[object, str | None]]:
        return {p.opts[0]: (p.default, getattr(p, "help", None)) for p in command.params}

    shared = {option.flag for option in SHARED_OPTIONS}
    assert len(shared) == 8
    assert {k: v for k, v in options(maps).items() if k in shared} == {k: v for k, v in options(validate).items()
                                                                      if k in shared}
    assert shared <= set(options(maps)) and all(options(maps)[flag][1] for flag in shared)
    # Library defaults and CLI defaults are one set of values.
    defaults = CamSettings()
    assert {option.field: option.default for option in SHARED_OPTIONS} == {
        name: getattr(defaults, name) for name in (option.field for option in SHARED_OPTIONS)}


def test_library_checks_name_the_value_not_a_flag() -> None:
    for settings, message in ((CamSettings(device="foo"), "device 'foo': choose one of auto, cpu, cuda"),
                              (CamSettings(steps=1), "steps 1: must be at least 2"),
                              (CamSettings(batch_size=0), "batch_size 0: must be at least 1")):
        with pytest.raises(InputError, match=message) as error:
            settings.validate()
        assert "--" not in str(error.value)
