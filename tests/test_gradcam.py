"""Grad-CAM: every target kind reproduces its run's stored score, both ViT kinds and a CNN tower
are hooked with the model's own grid, annotations land on the model's input pixels, localisation
and faithfulness figures match brute force, the commands write maps, figures and store rows, bad
annotation files fail cleanly, and hooks are always released."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.gradcam import (
    CamSettings,
    MapsConfig,
    ValidateConfig,
    Workspace,
    render_maps,
    study_sample,
    validate,
)
from embedstore.analyses.localisation import MapRecord, map_figures, summarise
from embedstore.analyses.report import write_report
from embedstore.analyses.study import AnalyzeConfig, analyze

from embedstore.annotations import InputGeometry, mask_name
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.gradcam import (
    cam_layout,
    candidate_layers,
    compute_maps,
    faithfulness,
    head_model,
    load_subject,
    randomisation_stages,
    randomise,
    randomised_copy,
)
from embedstore.heads import Head
from embedstore.ingest import IngestConfig, ingest
from embedstore.models import load_model
from embedstore.store import Store
from tests.browser import check_page

RUN_KINDS = (("zs", "study", None), ("zs", "multilabel", "posneg"), ("lp", "multilabel", None), ("ft", "study", None))


@pytest.fixture(scope="module")
def cam_store(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path, native_model: str
              ) -> Iterator[tuple[Store, dict[str, str]]]:
    """The small synthetic set with a zs (study), zs (multilabel, posneg), lp and ft run of the native ViT."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        store, _ = Store.init(tmp_path_factory.mktemp("cam") / "store")
        ingest(store, IngestConfig(path=synthetic_dir, name="syn"))
        runs = {}
        for mode, protocol, prompts in RUN_KINDS:
            runs[f"{mode}-{protocol}"] = extract(store, ExtractConfig(
                mode=mode, model=native_model, data="syn", protocol=protocol, prompts=prompts, epochs=1,
                encode_batch_size=64)).run_id
        yield store, runs


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ---------------------------------------------------------------------------------------------
# Targets and towers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [f"{m}-{p}" for m, p, _ in RUN_KINDS])
def test_each_target_kind_is_the_score_the_run_stored(cam_store: tuple[Store, dict[str, str]], kind: str) -> None:
    store, runs = cam_store
    workspace = Workspace(store, runs[kind], CamSettings(device="cpu"))
    ids = [int(s) for s in workspace.run.sample_ids[:6]]
    with torch.no_grad():
        logits = workspace.subject.module(workspace.inputs(workspace.pixels(ids))).double().numpy()
    np.testing.assert_allclose(logits, workspace.run.scores[:6], rtol=2e-4, atol=2e-4)
    maps = compute_maps(workspace.subject.module, workspace.layout, workspace.inputs(workspace.pixels(ids[:2])),
                        [0, 3])
    assert maps.shape == (2, 48, 48) and maps.min() >= 0 and maps.max() <= 1
    assert _hooks(workspace.subject.module) == 0


def test_biomedclip_shaped_run_is_hooked_at_the_studys_layer_with_its_own_grid(
        synthetic_store: Store, biomedclip_shaped: str) -> None:
    run_id = extract(synthetic_store, ExtractConfig(mode="zs", model=biomedclip_shaped, data="syn", protocol="study",
                                                    encode_batch_size=64)).run_id
    workspace = Workspace(synthetic_store, run_id, CamSettings(device="cpu"))
    assert workspace.layout.layer_name == "trunk.blocks.-3.attn.proj"
    assert workspace.layout.grid((112, 112)) == (7, 7)
    ids = [int(s) for s in workspace.run.sample_ids[:3]]
    with torch.no_grad():
        logits = workspace.subject.module(workspace.inputs(workspace.pixels(ids))).double().numpy()
    np.testing.assert_allclose(logits, workspace.run.scores[:3], rtol=2e-4, atol=2e-4)
    maps = compute_maps(workspace.subject.module, workspace.layout, workspace.inputs(workspace.pixels(ids)), [1, 2, 9])
    assert maps.shape == (3, 112, 112) and np.isfinite(maps).all()


@pytest.mark.parametrize("maker, layer, candidates", [
    ("make_resnet_clip", "layer4", ["layer1", "layer2", "layer3", "layer4"]),
    ("make_timm_cnn_clip", "trunk.stages.-1", [f"trunk.stages.{i}" for i in range(4)]),
])
def test_cnn_towers_are_hooked_at_their_last_stage(tmp_path: Path, maker: str, layer: str,
                                                   candidates: list[str]) -> None:
    from tests import model_fixtures

    loaded = load_model("local-dir:" + str(getattr(model_fixtures, maker)(tmp_path / "cnn")))
    visual = loaded.model.visual
    layout = cam_layout(visual)
    assert layout.layer_name == layer and layout.reshape_transform((64, 64)) is None
    assert candidate_layers(visual) == candidates
    module = head_model(visual, Head(np.random.default_rng(0).normal(size=(3, 32)), np.zeros(3), True))
    maps = compute_maps(module, layout, torch.randn(2, 3, 64, 64), [0, 2], method="gradcam++")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
    assert _hooks(module) == 0


def test_reshape_uses_the_models_grid_and_names_a_mismatch(biomedclip_shaped: str) -> None:
    layout = cam_layout(load_model(biomedclip_shaped).model.visual)
    reshape = layout.reshape_transform((112, 112))
    assert reshape is not None
    assert tuple(reshape(torch.zeros(2, 1 + 49, 8)).shape) == (2, 8, 7, 7)
    with pytest.raises(InputError, match="is not the 7×7 patch grid"):
        reshape(torch.zeros(2, 1 + 196, 8))


def test_hooks_are_released_after_an_exception(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), False))
    layout = cam_layout(visual)
    with pytest.raises(IndexError):
        compute_maps(module, layout, torch.randn(1, 3, 48, 48), [5])   # the head has 2 columns
    assert _hooks(module) == 0


def test_bad_layer_and_method_are_clear_errors(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    with pytest.raises(InputError, match="--layer transformer.nope"):
        cam_layout(visual, "transformer.nope")
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), False))
    with pytest.raises(InputError, match="--method"):
        compute_maps(module, cam_layout(visual), torch.randn(1, 3, 48, 48), [0], method="magic")
    with pytest.raises(InputError, match="is not the 6×6 patch grid"):
        compute_maps(module, cam_layout(visual, "conv1"), torch.randn(1, 3, 48, 48), [0])


# ---------------------------------------------------------------------------------------------
# Annotations on the model's input
# ---------------------------------------------------------------------------------------------

def test_boxes_follow_the_models_resize_and_centre_crop(native_model: str) -> None:
    from PIL import Image

    transform = load_model(native_model).pixel_transform          # Resize(48, bicubic) + CenterCrop(48)
    geometry = InputGeometry.from_transform(transform, (100, 200))  # height 100, width 200
    assert geometry.resized == (48, 96) and (geometry.top, geometry.left) == (0, 24)
    assert geometry.box(60, 10, 100, 30) == pytest.approx((60 * 0.48 - 24, 4.8, 100 * 0.48 - 24, 14.4))
    assert geometry.box(0, 0, 30, 100)[2] == 0.0                    # cropped away entirely
    # Against the model's own pipeline: a white box drawn in original pixels lands where we say.
    original = np.zeros((100, 200), dtype=np.uint8)
    original[20:70, 80:150] = 255
    seen = transform(Image.fromarray(original).convert("RGB")).numpy()[0] > 0.5
    ours = geometry.box_mask(80, 20, 150, 70)
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return np.count_nonzero(a & b) / np.count_nonzero(a | b)

    assert iou(seen, ours) > 0.9
    assert iou(geometry.mask(original), ours) > 0.9     # masks and boxes agree up to the edge pixels
    assert iou(geometry.mask(original), seen) > 0.9
    portrait = InputGeometry.from_transform(transform, (300, 150))
    assert portrait.resized == (96, 48) and (portrait.top, portrait.left) == (24, 0)


def _annotation_file(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "x0", "y0", "x1", "y1"])
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("row, message", [
    (["nope.png", "Cardiomegaly", 1, 1, 9, 9], r"annotations.csv:3: unknown filename 'nope.png'"),
    (["{real}", "Heart Attack", 1, 1, 9, 9], r"annotations.csv:3: unknown label 'Heart Attack'"),
    (["{real}", "Cardiomegaly", 9, 1, 2, 9], r"annotations.csv:3: empty or negative box"),
    (["{real}", "Cardiomegaly", "a", 1, 2, 9], r"annotations.csv:3: box coordinates must be numbers"),
])
def test_bad_annotation_rows_are_named(cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path, tmp_path: Path,
                                       row: list[object], message: str) -> None:
    store, runs = cam_store
    with open(synthetic_dir / "annotations.csv") as handle:
        good = next(csv.reader(handle.readlines()[1:2]))
    row = [good[0] if value == "{real}" else value for value in row]
    path = _annotation_file(tmp_path / "annotations.csv", [good, row])
    with pytest.raises(InputError, match=f"1 bad row\\(s\\); first: .*{message}"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=path))


def test_bad_annotation_file_exits_cleanly_and_stores_nothing(cam_store: tuple[Store, dict[str, str]],
                                                              tmp_path: Path, run_cli: object) -> None:
    store, runs = cam_store
    path = _annotation_file(tmp_path / "annotations.csv", [["nope.png", "Cardiomegaly", 1, 1, 9, 9]])
    with store.reader() as con:
        before = con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0]
    result = run_cli("gradcam", "validate", "--run", runs["ft-study"], "--annotations", str(path),
                     "--store", str(store.path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"embedstore: error: --annotations {path}: 1 bad row(s); first: {path}:2: unknown filename 'nope.png' "
        "(not in the run's dataset)")
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0] == before


def test_missing_columns_and_mask_files_are_named(cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path,
                                                  tmp_path: Path) -> None:
    store, runs = cam_store
    bad = tmp_path / "boxes.csv"
    bad.write_text("filename,label,x0,y0\n")
    with pytest.raises(InputError, match="missing column\\(s\\) x1, y1"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=bad))
    with pytest.raises(InputError, match="mask file .* is missing"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=synthetic_dir / "annotations.csv",
                                       masks=tmp_path))
    # A broken or mis-sized mask of a test image is named, and nothing is stored.
    with store.reader() as con:
        test_files = {r[0] for r in con.execute("SELECT filename FROM samples WHERE split = 'test'").fetchall()}
        before = con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0]
    with open(synthetic_dir / "annotations.csv") as handle:
        row = next(r for r in csv.reader(handle) if r[0] in test_files)
    one = _annotation_file(tmp_path / "one.csv", [row])
    masks = tmp_path / "masks"
    masks.mkdir()
    broken = masks / mask_name(row[0], row[1])
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match=f"--masks {broken}: is truncated or not an image"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=one, masks=masks))
    from PIL import Image

    Image.new("L", (7, 5)).save(broken, format="PNG")
    with pytest.raises(InputError, match=f"--masks {broken}: 7×5 pixels, but its image is 128×128"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=one, masks=masks))
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0] == before


# ---------------------------------------------------------------------------------------------
# Figures against brute force
# ---------------------------------------------------------------------------------------------

def test_localisation_figures_match_brute_force_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        cam = rng.integers(0, 4, size=(12, 10)).astype(float)        # heavy ties
        mask = rng.random((12, 10)) < rng.uniform(0.05, 0.5)
        if not mask.any():
            continue
        figures = map_figures(cam, mask, np.random.default_rng(0), top_fraction=0.2)
        peaks = cam == cam.max()
        assert figures.pointing_hit in {bool(v) for v in mask[peaks]}
        assert figures.energy_inside == pytest.approx(cam[mask].sum() / cam.sum())
        assert figures.area_share == pytest.approx(mask.mean())
        k = round(0.2 * cam.size)
        top = np.zeros(cam.size, bool)
        top[np.argsort(-cam.ravel(), kind="stable")[:k]] = True
        top = top.reshape(cam.shape)
        assert figures.iou_top == pytest.approx((top & mask).sum() / (top | mask).sum())
    # A flat map carries no information: its hit rate, energy and IoU are the chance levels.
    mask = np.zeros((20, 20), bool)
    mask[:5, :] = True
    flat = np.ones((20, 20))
    hits = [map_figures(flat, mask, np.random.default_rng(s)).pointing_hit for s in range(400)]
    assert abs(np.mean(hits) - 0.25) < 0.07
    assert map_figures(flat, mask, np.random.default_rng(0)).energy_inside == pytest.approx(0.25)
    assert map_figures(np.zeros((20, 20)), mask, np.random.default_rng(0)).energy_inside == pytest.approx(0.25)
    exact = map_figures(mask.astype(float), mask, np.random.default_rng(0))
    assert exact.pointing_hit and exact.iou_top == 1.0 and exact.iou_chance == pytest.approx(0.25 / 1.75)
    # Tolerance: a peak 3 px below the annotation hits with tolerance 3, not 2; the chance level is
    # the share of pixels within the tolerance (brute force over every pixel).
    peak = np.zeros((20, 20))
    peak[7, 4] = 1.0
    assert not map_figures(peak, mask, np.random.default_rng(0), tolerance=2.0).pointing_hit
    grown = map_figures(peak, mask, np.random.default_rng(0), tolerance=3.0)
    assert grown.pointing_hit and grown.pointing_chance == pytest.approx(8 * 20 / 400)
    assert grown.area_share == pytest.approx(0.25)


def test_summaries_are_means_with_intervals_per_label() -> None:
    rng = np.random.default_rng(1)
    records = []
    for i in range(40):
        cam, mask = rng.random((8, 8)), rng.random((8, 8)) < 0.3
        records.append(MapRecord(i, "A" if i % 2 else "B", map_figures(cam, mask, rng), None if i == 3 else i / 40,
                                 0.5))
    rows = {(r.metric, r.label): r for r in summarise(records, AnalysisOptions(bootstrap=200, seed=1))}
    hits = [r.figures.pointing_hit for r in records if r.label == "A"]
    assert rows[("gradcam.pointing_game", "A")].value == pytest.approx(np.mean(hits))
    deletion = [r.deletion_auc for r in records if r.deletion_auc is not None]
    assert rows[("gradcam.deletion_auc", None)].value == pytest.approx(np.mean(deletion))
    for row in rows.values():
        assert row.ci_low is not None and row.ci_high is not None
        assert row.ci_low - 1e-12 <= row.value <= row.ci_high + 1e-12
    assert rows[("gradcam.pointing_game", None)].params["n_maps"] == 40


class _QuadrantScore(torch.nn.Module):
    """A model whose only output is the mean of the top-left quadrant (already a probability in [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :8, :8].mean(dim=(1, 2, 3))[:, None]


def test_deletion_and_insertion_reward_the_map_that_finds_the_evidence() -> None:
    image = torch.ones(1, 3, 16, 16)
    right = np.zeros((16, 16), np.float32)
    right[:8, :8] = 1.0
    right += np.linspace(0, 0.1, 256, dtype=np.float32).reshape(16, 16)
    wrong = 1.0 - right

    def identity(logits: np.ndarray) -> np.ndarray:
        return logits

    good = faithfulness(_QuadrantScore(), image, right, 0, identity, steps=16)
    bad = faithfulness(_QuadrantScore(), image, wrong, 0, identity, steps=16)
    # Brute force: deleting the quadrant first drops the score linearly over the first quarter of the pixels.
    fractions = np.linspace(0, 1, 17)
    expected_deletion = np.trapezoid(np.clip(1 - fractions / 0.25, 0, 1), fractions)
    assert good[0] == pytest.approx(expected_deletion, abs=1e-6)
    assert good[1] == pytest.approx(1 - expected_deletion, abs=1e-6)
    assert bad[0] == pytest.approx(1 - expected_deletion, abs=1e-6)
    assert bad[1] == pytest.approx(expected_deletion, abs=1e-6)


def test_probabilities_follow_each_runs_protocol(cam_store: tuple[Store, dict[str, str]]) -> None:
    store, runs = cam_store
    logits = np.array([[2.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    study = load_subject(store, runs["zs-study"], torch.device("cpu"))
    np.testing.assert_allclose(study.probabilities(logits), [[1.0, 0.0, 1 / 3], [0.0, 0.0, 0.0]])
    for kind in ("lp-multilabel", "zs-multilabel"):          # a head's logit, a posneg log-odds
        subject = load_subject(store, runs[kind], torch.device("cpu"))
        np.testing.assert_allclose(subject.probabilities(logits), 1 / (1 + np.exp(-logits)))


# ---------------------------------------------------------------------------------------------
# Layer selection and the randomisation check
# ---------------------------------------------------------------------------------------------

def test_select_layer_picks_the_lowest_mean_deletion_auc_on_val(cam_store: tuple[Store, dict[str, str]]) -> None:
    store, runs = cam_store
    workspace = Workspace(store, runs["ft-study"], CamSettings(select_layer=True, select_maps=6, device="cpu"))
    assert set(workspace.layer_selection) == set(candidate_layers(workspace.subject.visual))
    assert workspace.layout.layer_name == min(workspace.layer_selection, key=workspace.layer_selection.get)
    with pytest.raises(InputError, match="--select-layer picks the layer itself"):
        Workspace(store, runs["ft-study"], CamSettings(select_layer=True, layer="transformer.resblocks.0"))


def test_randomisation_runs_top_down_and_leaves_the_trained_model_alone(native_model: str) -> None:
    visual = load_model(native_model).model.visual
    module = head_model(visual, Head(np.ones((2, 32)), np.zeros(2), True))
    names = [name for name, _ in randomisation_stages(module)]
    assert names[0] == "head"
    blocks = [n for n in names if "resblocks" in n]
    assert blocks == ["visual.transformer.resblocks.2", "visual.transformer.resblocks.1", "visual.transformer.resblocks.0"]
    assert names.index("visual.ln_post") < names.index(blocks[0]) < names.index("visual.conv1")
    assert sum(len(p) for _, p in randomisation_stages(module)) == len(list(module.parameters()))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    copy = randomised_copy(module)
    for _, parameters in randomisation_stages(copy):
        randomise(parameters, torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    changed = [k for k, v in copy.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) == len(before)


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------

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
    with pytest.raises(InputError, match="--n 20"):
        study_sample(10, 20, 42)


def test_gradcam_without_run_is_a_clear_error(run_cli: object, tmp_store: Store) -> None:
    result = run_cli("gradcam", "--store", str(tmp_store.path))
    assert result.returncode == 2 and "needs --run RUN and --out DIR" in result.stderr


def test_validate_refuses_a_run_that_is_not_there(cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path) -> None:
    store, _ = cam_store
    with pytest.raises(InputError, match="--run nope: no complete run"):
        load_subject(store, "nope", torch.device("cpu"))
