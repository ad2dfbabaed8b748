"""Every closed choice is declared once (embedstore/choices.py): the CLI refuses a bad value with
the valid ones in one line (exit 2), the library refuses it naming the value (never a CLI flag),
library errors get the CLI's option only in the CLI, and the console shows embedstore's lines,
not third-party noise."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from embedstore.choices import (
    ChartKind,
    ColorBy,
    Device,
    IngestFormat,
    Mode,
    PerLabelMetric,
    PromptSet,
    Protocol,
    ProtocolChoice,
    Reducer,
    Resampling,
    SampleDomain,
    Split,
    SplitMethod,
    SqlFormat,
    TableFormat,
)
from embedstore.errors import InputError
from embedstore.store import Store

EXTRACT = ["extract", "--mode", "zs", "--model", "demo", "--data", "syn"]
CHART = ["chart", "labels", "--out", "charts"]

#: (command line with the bad value last, the enum whose values the refusal must list)
BAD_CHOICES = [
    (["extract", "--model", "demo", "--data", "syn", "--mode", "bogus"], Mode),
    ([*EXTRACT, "--protocol", "bogus"], Protocol),
    ([*EXTRACT, "--prompts", "bogus"], PromptSet),
    ([*EXTRACT, "--device", "foo"], Device),
    (["analyze", "--protocol", "bogus"], ProtocolChoice),
    (["analyze", "--split", "bogus"], Split),
    (["analyze", "--resampling", "bogus"], Resampling),
    (["analyze", "--format", "bogus"], TableFormat),
    (["chart", "--out", "charts", "bogus"], ChartKind),
    ([*CHART, "--protocol", "both"], Protocol),
    ([*CHART, "--color-by", "bogus"], ColorBy),
    (["chart", "per-label", "--out", "charts", "--metric", "bogus"], PerLabelMetric),
    ([*CHART, "--reduce", "bogus"], Reducer),
    (["sql", "SELECT 1", "--format", "bogus"], SqlFormat),
    (["ingest", "data", "--name", "x", "--format", "bogus"], IngestFormat),
    (["ingest", "data", "--name", "x", "--split", "bogus"], SplitMethod),
    (["data", "sample", "--out", "sample", "--domain", "bogus"], SampleDomain),
]


@pytest.mark.parametrize("args, kind", BAD_CHOICES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_choice_is_one_line_listing_the_valid_ones(tmp_store: Store, run_cli, args: list[str],
                                                         kind: type) -> None:
    result = run_cli(*args, env={"EMBEDSTORE_STORE": str(tmp_store.path)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert line.startswith("embedstore: error: ") and f"'{args[-1]}'" in line, line
    assert all(f"'{member.value}'" in line for member in kind), line
    assert result.stdout == ""


def test_library_configs_refuse_a_bad_choice_naming_the_value(tmp_path: Path) -> None:
    from embedstore.analyses.study import AnalyzeConfig
    from embedstore.extract import ExtractConfig, resolve_device
    from embedstore.ingest import IngestConfig
    from embedstore.prompts import build_prompts
    from embedstore.synthetic import SampleConfig

    calls = [
        (lambda: ExtractConfig(mode="xx", model="demo", data="syn"), "mode 'xx'"),
        (lambda: ExtractConfig(mode="zs", model="demo", data="syn", protocol="both"), "protocol 'both'"),
        (lambda: ExtractConfig(mode="zs", model="demo", data="syn", prompts="poetry"), "prompts 'poetry'"),
        (lambda: ExtractConfig(mode="zs", model="demo", data="syn", device="tpu"), "device 'tpu'"),
        (lambda: resolve_device("foo"), "device 'foo'"),
        (lambda: AnalyzeConfig(protocol="neither"), "protocol 'neither'"),
        (lambda: AnalyzeConfig(split="holdout"), "split 'holdout'"),
        (lambda: AnalyzeConfig(resampling="jackknife"), "resampling 'jackknife'"),
        (lambda: IngestConfig(path=tmp_path, name="x", format="dicom"), "format 'dicom'"),
        (lambda: IngestConfig(path=tmp_path, name="x", split="random"), "split 'random'"),
        (lambda: build_prompts("poetry", ["Edema"]), "prompts 'poetry'"),
        (lambda: SampleConfig(out=tmp_path / "s", domain="other").validate(), "domain 'other'"),
    ]
    for call, named in calls:
        with pytest.raises(InputError) as refused:
            call()
        message = str(refused.value)
        assert message.startswith(named) and "choose one of" in message and "--" not in message, message


def test_choices_arrive_as_members_and_plain_strings_still_work(tmp_path: Path) -> None:
    from embedstore.analyses.study import AnalyzeConfig
    from embedstore.extract import ExtractConfig
    from embedstore.ingest import IngestConfig

    config = ExtractConfig(mode="lp", model="demo", data="syn", protocol="study", device="cpu")
    assert (config.mode, config.protocol, config.device) == (Mode.LP, Protocol.STUDY, Device.CPU)
    assert ExtractConfig(mode="zs", model="demo", data="syn", protocol="study").prompt_set is PromptSet.NAMES
    assert AnalyzeConfig(protocol="study").protocols() == (Protocol.STUDY,)
    assert AnalyzeConfig().protocols() == (Protocol.STUDY, Protocol.MULTILABEL)
    assert IngestConfig(path=tmp_path, name="x", format="kaggle", split="given").split is SplitMethod.GIVEN


def test_library_messages_name_values_and_the_cli_names_its_options(tmp_store: Store, run_cli) -> None:
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.extract import ExtractConfig
    from embedstore.store import resolve_dataset

    with pytest.raises(InputError) as refused:
        ExtractConfig(mode="zs", model="demo", data="syn", batch_size=0).validate()
    assert str(refused.value) == "batch_size 0: must be at least 1" and refused.value.parameter == "batch_size"
    with pytest.raises(InputError) as refused:
        resolve_dataset(tmp_store, None)
    assert str(refused.value) == "the store has 0 datasets (none); name one"
    with pytest.raises(InputError, match=r"^dataset 'nope': no such dataset in .*\(have: none\)"):
        resolve_dataset(tmp_store, "nope")
    with pytest.raises(InputError, match="^bootstrap -1: must be 0 or more$"):
        analyze(tmp_store, AnalyzeConfig(bootstrap=-1))
    store = ["--store", str(tmp_store.path)]
    cases = [
        (["extract", "--mode", "zs", "--model", "demo", "--data", "syn", "--batch-size", "0"],
         "embedstore: error: --batch-size 0: must be at least 1"),
        (["analyze", "--bootstrap", "-1"], "embedstore: error: --bootstrap -1: must be 0 or more"),
        (["analyze"], "embedstore: error: the store has 0 datasets (none); name one (--data)"),
        (["data", "stats", "nope"], "embedstore: error: dataset 'nope': no such dataset in"),
    ]
    for args, line in cases:
        result = run_cli(*args, *store)
        assert result.returncode == 2 and result.stderr.strip().startswith(line), result.stderr


def test_an_option_is_named_only_where_the_command_has_it() -> None:
    from embedstore.cli.app import option_message, option_of

    assert option_of("batch_size", ["extract", "--mode", "zs"]) == "--batch-size"
    assert option_of("format", ["ingest", "x"]) == "--format"
    assert option_of("labels_csv", ["ingest", "x"]) == "--labels"
    assert option_of("k", ["neighbors"]) == "--k"
    assert option_of("params", ["sql", "--name", "x"]) == "--param"
    assert option_of("data", ["data", "stats", "x"]) is None  # a dataset argument there, no --data
    error = InputError("the store has 2 datasets (a, b); name one", parameter="data")
    assert option_message(error, ["report"]) == "the store has 2 datasets (a, b); name one (--data)"
    assert option_message(error, ["store", "info"]) == "the store has 2 datasets (a, b); name one"
    assert option_message(InputError("k 0: must be at least 1", parameter="k"), ["analyze"]) == "--k 0: must be at least 1"


# -- quiet, honest console output -----------------------------------------------------------------

#: Third-party lines a newcomer cannot act on; none may reach the console.
NOISE = ("No pretrained weights loaded", "initialized randomly", "no CLIP weights found", "Warning:",
         "ConvergenceWarning", "UserWarning", "FutureWarning", "DeprecationWarning", "Editable installation")


def _config_only_model(folder: Path) -> Path:
    """The native test CLIP's config without any weights file: open_clip builds it from the config."""
    import shutil

    from tests.model_fixtures import make_native_clip

    made = make_native_clip(folder / "with-weights")
    target = folder / "config-only"
    target.mkdir()
    shutil.copy(made / "open_clip_config.json", target / "open_clip_config.json")
    return target


def test_a_config_built_model_loads_without_third_party_noise(tmp_store: Store, tmp_path: Path, run_cli) -> None:
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.synthetic import SampleConfig, write_sample

    write_sample(SampleConfig(out=tmp_path / "tiny", n=12, seed=7, size=64, workers=1))
    ingest(tmp_store, IngestConfig(path=tmp_path / "tiny", name="tiny"))
    folder = _config_only_model(tmp_path)
    result = run_cli("extract", "--mode", "zs", "--model", f"local-dir:{folder}", "--data", "tiny",
                     "--workers", "0", "--store", str(tmp_store.path))
    assert result.returncode == 0, result.stderr
    for noise in NOISE:
        assert noise not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if "holds no weights file" in line]
    assert len(ours) == 1 and ours[0].startswith(f"warning: model local-dir:{folder}"), result.stderr


def test_open_clip_lines_go_to_the_debug_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from embedstore.demo_model import DemoConfig, _pretrain

    tiny = DemoConfig(n_images=16, render_size=64, image_size=32, patch_size=16, vision_width=32, vision_layers=1,
                      text_width=32, text_layers=1, context_length=16, embed_dim=16, epochs=1, batch_size=8)
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="embedstore"):
        _pretrain(tiny, tmp_path, None)
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in shown if any(noise in m for noise in NOISE)], shown
    debug = [r.getMessage() for r in caplog.records if r.name == "embedstore.models" and r.levelno == logging.DEBUG]
    assert any("initialized randomly" in m for m in debug), debug


def _separable(n: int = 30, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = np.arange(n) % 3
    return rng.normal(size=(n, d)) + 4.0 * np.eye(d)[classes], classes


def test_the_probe_records_whether_its_fit_converged(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from embedstore.analyses import separability

    x, classes = _separable()
    _, fit = separability.fit_probe(x, classes, seed=0)
    reference = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=0).fit(x, classes)
    assert fit == {"converged": True, "n_iter": int(np.max(reference.n_iter_))}
    monkeypatch.setattr(separability, "PROBE_MAX_ITER", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe, fit = separability.fit_probe(x, classes, seed=0)
    assert fit == {"converged": False, "n_iter": 2}
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # scikit-learn itself says it stopped early
        with pytest.raises(ConvergenceWarning):
            LogisticRegression(max_iter=2, class_weight="balanced", random_state=0).fit(x, classes)


def test_the_study_probe_accuracy_carries_its_fit_in_params(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedstore.analyses import separability
    from embedstore.analyses.common import AnalysisOptions
    from embedstore.analyses.rundata import RunData

    x, classes = _separable()
    targets = np.eye(3, dtype=np.int8)[classes]
    run = RunData("r", "zs", "study", None, "m", "d", None, None, {}, np.arange(len(x)), np.array(["test"] * len(x)),
                  ["A", "B", "C"], x.astype(np.float32), np.zeros(targets.shape), targets)
    from sklearn.exceptions import ConvergenceWarning

    monkeypatch.setattr(separability, "PROBE_MAX_ITER", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = separability.compute(run, AnalysisOptions(protocol="study", bootstrap=0))
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]  # recorded, not printed
    probe = next(r for r in rows if r.metric == "probe_accuracy")
    assert probe.params["converged"] is False and probe.params["n_iter"] == 2
    assert probe.params["probe"] == "LogisticRegression(max_iter=2, class_weight='balanced')"
    assert "converged" not in next(r for r in rows if r.metric == "knn5_accuracy").params
