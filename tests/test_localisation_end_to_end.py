"""`gradcam validate` on the synthetic VinDr-CXR layout (three readers per image: the human ceiling)
and the synthetic MIMIC-CXR layout with MS-CXR sentences (phrase grounding of a zs run): what is
stored, checked against a brute-force recomputation from the annotation files and the maps."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedstore.annotations import InputGeometry
from embedstore.cam.run import ValidateConfig, ValidateResult, validate
from embedstore.models import load_model
from embedstore.store import Store

pytestmark = pytest.mark.slow


def _store_with_runs(root: Path, layout: str, native_model: str, kinds: tuple[tuple[str, str, str | None], ...]
                     ) -> tuple[Store, Path, dict[str, str]]:
    from embedstore.choices import SampleDomain, SampleLayout
    from embedstore.extract import ExtractConfig, extract
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.synthetic import SampleConfig, write_layout

    data = write_layout(SampleLayout(layout), SampleConfig(out=root / "data", n=70, seed=3, size=64, workers=1,
                                                           domain=SampleDomain.SOURCE))
    store, _ = Store.init(root / "store")
    ingest(store, IngestConfig(path=data, name="d"))
    runs = {f"{mode}-{protocol}": extract(store, ExtractConfig(mode=mode, model=native_model, data="d",
                                                               protocol=protocol, prompts=prompts, epochs=1)).run_id
            for mode, protocol, prompts in kinds}
    return store, data, runs


@pytest.fixture(scope="module")
def vindr(tmp_path_factory: pytest.TempPathFactory, native_model: str) -> Iterator[tuple[Store, Path, ValidateResult]]:
    root = tmp_path_factory.mktemp("vindr-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        store, data, runs = _store_with_runs(root, "vindr-cxr", native_model, (("lp", "multilabel", None),))
        files = (data / "annotations" / "annotations_train.csv", data / "annotations" / "annotations_test.csv")
        result = validate(store, ValidateConfig(run=runs["lp-multilabel"], annotations=files, bootstrap=50,
                                                sanity_maps=2))
        yield store, data, result


def _stored(store: Store, run_id: str) -> dict[tuple[str, str | None], tuple[float, float | None, float | None]]:
    with store.reader() as con:
        rows = con.execute("SELECT metric, label, value, ci_low, ci_high FROM metrics WHERE run_id = ?",
                           [run_id]).fetchall()
    return {(m, label): (v, lo, hi) for m, label, v, lo, hi in rows}


def _brute_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum(x and y for x, y in zip(a.flat, b.flat, strict=True))
                 / sum(x or y for x, y in zip(a.flat, b.flat, strict=True)))


def _box_pixels(geometry: InputGeometry, box: tuple[float, float, float, float]) -> np.ndarray:
    """Brute force: the input pixels whose centre lies in the mapped box."""
    x0, y0, x1, y1 = geometry.box(*box)
    out = np.zeros(geometry.crop, dtype=bool)
    for y in range(geometry.crop[0]):
        for x in range(geometry.crop[1]):
            out[y, x] = x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1
    return out


def test_vindr_readers_give_the_human_ceiling_and_the_gap(vindr: tuple[Store, Path, ValidateResult],
                                                          native_model: str) -> None:
    store, data, result = vindr
    stored = _stored(store, result.run_id)
    for metric in ("localisation.miou", "localisation.hit_rate", "localisation.miou_otsu", "localisation.human_miou",
                   "localisation.human_hit_rate", "localisation.held_out_miou", "localisation.gap_to_human.miou",
                   "localisation.gap_to_human.hit_rate", "localisation.fraction_of_human.miou",
                   "localisation.random_weights.miou"):
        assert (metric, None) in stored, metric
    assert any(metric == "localisation.threshold" for metric, _ in stored)
    assert result.held_out and len({r.reader for r in result.held_out}) >= 3
    # Brute force from the file: every reader's boxes on the model's input, each held out against the others.
    with store.reader() as con:
        by_sample = dict(con.execute("SELECT sample_id, filename FROM samples").fetchall())
    boxes: dict[tuple[str, str], dict[str, list[tuple[float, ...]]]] = defaultdict(lambda: defaultdict(list))
    readers: dict[str, set[str]] = defaultdict(set)
    with open(data / "annotations" / "annotations_test.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            readers[row["image_id"]].add(row["rad_id"])
            if row["x_min"]:
                boxes[(row["image_id"], row["class_name"])][row["rad_id"]].append(
                    tuple(float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max")))
    geometry = InputGeometry.from_transform(load_model(native_model).pixel_transform, (64, 64))
    targets = {(t.sample_id, t.label): t for t in result.targets}
    for record in result.held_out:
        image = Path(by_sample[record.sample_id]).stem
        drawn = boxes[(image, record.label)]
        masks = {reader: np.zeros(geometry.crop, dtype=bool) for reader in readers[image]}
        for reader, reader_boxes in drawn.items():
            for box in reader_boxes:
                masks[reader] |= _box_pixels(geometry, box)     # type: ignore[arg-type]
        others = np.zeros(geometry.crop, dtype=bool)
        for reader, mask in masks.items():
            if reader != record.reader:
                others |= mask
        own = masks[record.reader]
        assert record.human_iou == pytest.approx(_brute_iou(own, others) if own.any() else 0.0)
        cam = result.maps[result.targets.index(targets[(record.sample_id, record.label)])]
        threshold = result.thresholds.of(record.label)
        if threshold is not None:
            scaled = (cam - cam.min()) / (cam.max() - cam.min()) if cam.max() > cam.min() else np.zeros_like(cam)
            assert record.model_iou == pytest.approx(_brute_iou(scaled > threshold, others))
    human = np.mean([r.human_iou for r in result.held_out])
    model = np.mean([r.model_iou for r in result.held_out])
    assert stored[("localisation.human_miou", None)][0] == pytest.approx(human)
    assert stored[("localisation.gap_to_human.miou", None)][0] == pytest.approx(model - human)
    low, high = stored[("localisation.gap_to_human.miou", None)][1:]
    assert low is not None and high is not None and low <= model - human <= high
    # The main figures: each target is every reader's boxes together; the stored mean is the mean over maps.
    ious = [r.segmentation.iou for r in result.records if r.segmentation]
    assert stored[("localisation.miou", None)][0] == pytest.approx(np.mean(ious))
    for target, cam, record in zip(result.targets, result.maps, result.records, strict=True):
        image = Path(by_sample[target.sample_id]).stem
        union = np.zeros(geometry.crop, dtype=bool)
        for reader_boxes in boxes[(image, target.label)].values():
            for box in reader_boxes:
                union |= _box_pixels(geometry, box)             # type: ignore[arg-type]
        assert np.array_equal(union, target.region)
        threshold = result.thresholds.of(target.label)
        if threshold is not None and record.segmentation:
            scaled = (cam - cam.min()) / (cam.max() - cam.min()) if cam.max() > cam.min() else np.zeros_like(cam)
            assert record.segmentation.iou == pytest.approx(_brute_iou(scaled > threshold, union))
    sizes = [r.segmentation.size for r in result.records if r.segmentation]
    assert set(sizes) == {"small", "medium", "large"}
    assert ("localisation.miou.small", None) in stored and ("localisation.hit_rate.large", None) in stored


def test_vindr_chart_and_report_show_the_human_band(vindr: tuple[Store, Path, ValidateResult], tmp_path: Path) -> None:
    from embedstore.choices import ChartKind
    from embedstore.rendering.charts import ChartOptions, chart_spec
    from embedstore.rendering.report import write_report

    store, _, result = vindr
    spec = chart_spec(store, ChartKind.GRADCAM, ChartOptions(data="d"))
    rows = spec["data"]["values"] if "data" in spec else next(iter(spec["datasets"].values()))
    assert {"trained model", "random weights", "chance", "human readers", "small lesions"} <= {r["figure"] for r in rows}
    human = [r for r in rows if r["figure"] == "human readers" and r["label"] == "all" and r["panel"] == "mIoU"]
    assert human and human[0]["value"] == pytest.approx(np.mean([r.human_iou for r in result.held_out]))
    page = write_report(store, tmp_path / "report.html").path.read_text()
    assert "human ceiling" in page and "CheXlocalize" in page


@pytest.fixture(scope="module")
def mscxr(tmp_path_factory: pytest.TempPathFactory, native_model: str) -> Iterator[tuple[Store, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("mscxr-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        store, data, runs = _store_with_runs(root, "mimic-cxr", native_model,
                                             (("zs", "multilabel", None), ("lp", "multilabel", None)))
        yield store, runs, data / "ms-cxr" / "MS_CXR_Local_Alignment_v1.0.0.csv"


def test_ms_cxr_sentences_ground_a_zero_shot_run(mscxr: tuple[Store, dict[str, str], Path]) -> None:
    store, runs, sentences = mscxr
    result = validate(store, ValidateConfig(run=runs["zs-multilabel"], annotations=sentences, bootstrap=20,
                                            sanity_maps=2))
    assert result.grounding
    stored = _stored(store, result.run_id)
    for metric in ("grounding.hit_rate", "grounding.miou", "grounding.cnr", "grounding.label_hit_rate",
                   "grounding.label_cnr", "localisation.miou"):
        assert (metric, None) in stored, metric
    assert stored[("grounding.hit_rate", None)][0] == pytest.approx(np.mean([r.hit for r in result.grounding]))
    finite = [r.cnr for r in result.grounding if np.isfinite(r.cnr)]
    assert stored[("grounding.cnr", None)][0] == pytest.approx(np.mean(finite))
    with open(sentences, newline="") as handle:
        written = {row["label_text"] for row in csv.DictReader(handle)}
    assert {r.sentence for r in result.grounding} <= written
    with store.reader() as con:
        prompts = {p for (p,) in con.execute("SELECT prompt FROM text_embeddings WHERE run_id = ?",
                                             [result.run_id]).fetchall()}
    assert {r.sentence for r in result.grounding} <= prompts          # stored with the run as prompts
    # … but kept apart from its prompt set: never the zero-shot head's, a text query's or a chart's.
    from embedstore import queries
    from embedstore.analyses.neighbors import nearest
    from embedstore.errors import InputError

    sentence = result.grounding[0].sentence
    with store.reader() as con:
        head_prompts = {prompt for _, prompt, _ in queries.fetch(con, "run_prompts", run_id=result.run_id)}
    assert head_prompts and not head_prompts & {r.sentence for r in result.grounding}
    with pytest.raises(InputError, match="has no stored text embedding"):
        nearest(store, result.run_id, text=sentence)
    assert nearest(store, result.run_id, text=result.grounding[0].label, k=2)[0]["query"] != f"prompt {sentence!r}"
    again = validate(store, ValidateConfig(run=runs["zs-multilabel"], annotations=sentences, bootstrap=20,
                                           sanity_maps=2))
    with store.reader() as con:
        count = con.execute("SELECT count(*) FROM text_embeddings WHERE run_id = ?", [result.run_id]).fetchall()[0][0]
        assert count == len(prompts)                                   # re-validating adds no duplicates
    assert [r.hit for r in again.grounding] == [r.hit for r in result.grounding]
    # A non-zs run has no text target: its maps are scored, no grounding figure.
    probe = validate(store, ValidateConfig(run=runs["lp-multilabel"], annotations=sentences, bootstrap=0,
                                           sanity_maps=1))
    assert not probe.grounding and not any(m.startswith("grounding.") for m, _ in _stored(store, probe.run_id))


def test_the_cli_takes_several_annotation_files_and_prints_every_table(vindr: tuple[Store, Path, ValidateResult],
                                                                      run_cli: object) -> None:
    store, data, result = vindr
    files = [a for name in ("annotations_train.csv", "annotations_test.csv")
             for a in ("--annotations", str(data / "annotations" / name))]
    shell = run_cli("gradcam", "validate", "--run", result.run_id, *files, "--annotations-format", "vindr",  # type: ignore[operator]
                    "--bootstrap", "0", "--sanity-maps", "1", "--store", str(store.path))
    assert shell.returncode == 0, shell.stderr
    for title in ("CheXlocalize", "human ceiling", "localisation"):
        assert title in shell.stdout
    refused = run_cli("gradcam", "validate", "--run", result.run_id, *files, "--annotations-format", "coco",  # type: ignore[operator]
                      "--store", str(store.path))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
