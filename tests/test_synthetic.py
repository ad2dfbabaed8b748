"""The synthetic IU-Xray benchmark: files, determinism, prevalence, annotations on the findings."""

from __future__ import annotations

import csv
import filecmp
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedstore.errors import InputError
from embedstore.iuxray import IMAGE_DIR, STUDY_CSV
from embedstore.labels import CHEXPERT_LABELS, NO_FINDING
from embedstore.synthetic import (
    FINDINGS,
    IUXRAY_COUNTS,
    SampleConfig,
    plan_dataset,
    render_frontal,
    write_sample,
)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed, workers in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1)):
        write_sample(SampleConfig(out=tmp_path / name, n=30, seed=seed, size=96, workers=workers))
    same = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert not same.diff_files and not same.left_only and not same.right_only
    images_a = sorted((tmp_path / "a" / IMAGE_DIR).iterdir())
    images_b = sorted((tmp_path / "b" / IMAGE_DIR).iterdir())
    assert [p.read_bytes() for p in images_a] == [p.read_bytes() for p in images_b]
    assert (tmp_path / "a" / STUDY_CSV).read_bytes() != (tmp_path / "c" / STUDY_CSV).read_bytes()


def test_writes_the_files_a_real_iuxray_copy_has(synthetic_dir: Path) -> None:
    study = _rows(synthetic_dir / STUDY_CSV)
    assert list(study[0]) == ["uid", "filename", "indication", "comparison", "findings", "impression",
                              *CHEXPERT_LABELS]
    assert len(study) == 120
    assert all((synthetic_dir / IMAGE_DIR / r["filename"]).is_file() for r in study)
    assert all(r["filename"].startswith(f"{r['uid']}_IM-") and r["filename"].endswith(".dcm.png") for r in study)
    assert {v for r in study for label in CHEXPERT_LABELS for v in [r[label]]} <= {"1.0", "0.0", "-1.0", ""}
    projections = _rows(synthetic_dir / "indiana_projections.csv")
    assert {p["projection"] for p in projections} == {"Frontal", "Lateral"}
    reports = _rows(synthetic_dir / "indiana_reports.csv")
    assert {r["uid"] for r in reports} == {r["uid"] for r in study}
    negated = [r for r in study if "No pneumothorax." in r["findings"]]
    assert negated and all(r["Pneumothorax"] == "0.0" for r in negated)


def test_every_finding_has_one_box_and_one_mask(synthetic_dir: Path) -> None:
    study = _rows(synthetic_dir / STUDY_CSV)
    boxes = _rows(synthetic_dir / "annotations.csv")
    positives = {(r["filename"], label) for r in study for label in FINDINGS if r[label] == "1.0"}
    annotated = Counter((b["filename"], b["label"]) for b in boxes)
    assert set(annotated) == positives and set(annotated.values()) == {1}
    for box in boxes[:20]:
        stem = box["filename"].removesuffix(".dcm.png")
        mask = np.asarray(Image.open(synthetic_dir / "masks" / f"{stem}__{box['label'].lower().replace(' ', '_')}.png"))
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(int(box[k]) for k in ("x0", "y0", "x1", "y1"))


@pytest.mark.parametrize("label", FINDINGS)
def test_annotations_lie_on_the_rendered_findings(label: str) -> None:
    sides = {finding: 1 for finding in FINDINGS}
    for image_index in range(3):
        with_finding, masks = render_frontal(11, "target", image_index, (label,), sides, 128)
        without, _ = render_frontal(11, "target", image_index, (), sides, 128)
        changed = with_finding.astype(int) != without.astype(int)
        mask = masks[label]
        ys, xs = np.nonzero(mask)
        box = np.zeros_like(mask)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        assert changed.sum() > 0.2 * mask.sum(), "the finding is barely visible"
        assert not (changed & ~box).any(), "pixels changed outside the annotation box"
        assert (changed & mask).sum() >= 0.9 * changed.sum()


def test_prevalence_follows_iuxray_counts_scaled_to_n(tmp_path: Path) -> None:
    for n in (3818, 1000):
        jobs = [job for job in plan_dataset(SampleConfig(out=tmp_path, n=n)) if job.frontal]
        assert len(jobs) == n
        counts = Counter(label for job in jobs for label in job.study.findings)
        normal = sum(1 for job in jobs if not job.study.findings)
        for label in FINDINGS:
            expected = IUXRAY_COUNTS[label] * n / 3818
            assert abs(counts[label] - expected) <= max(4, 0.12 * expected), (label, counts[label], expected)
        assert abs(normal - IUXRAY_COUNTS[NO_FINDING] * n / 3818) <= 0.05 * n


def test_source_domain_is_balanced(tmp_path: Path) -> None:
    jobs = plan_dataset(SampleConfig(out=tmp_path, n=2000, domain="source"))
    counts = Counter(label for job in jobs if job.frontal for label in job.study.findings)
    assert max(counts.values()) / min(counts.values()) < 1.5


def test_bad_options_and_non_empty_output_are_refused(synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="domain 'other': choose one of target, source"):
        write_sample(SampleConfig(out=tmp_path / "x", domain="other"))
    with pytest.raises(InputError, match="already holds a dataset"):
        write_sample(SampleConfig(out=synthetic_dir, n=10))
