"""The GPU benchmark's script runs end to end on a CPU at tiny sizes (`bench/gpu.py --smoke`), so it
cannot rot between the rare sessions that have a GPU: every section finishes without an error, and
the folder it writes holds `gpu.json` and `gpu.md` (the goals and a table of every figure)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _errors(value: Any, where: str = "") -> list[str]:
    """Every `error` recorded anywhere in the benchmark's JSON, with where it is."""
    if isinstance(value, dict):
        found = [f"{where}: {value['error']}"] if "error" in value else []
        return found + [e for key, inner in value.items() for e in _errors(inner, f"{where}/{key}")]
    if isinstance(value, list):
        return [e for i, inner in enumerate(value) for e in _errors(inner, f"{where}[{i}]")]
    return []


def test_gpu_benchmark_smoke_runs_every_section_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench-out"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    sections = report["sections"]
    assert report["env"]["smoke"] is True
    assert set(sections) >= {"setup", "biomedclip", "ft", "knn", "study", "study_encode", "batched", "cache", "decode",
                             "lp", "text", "estimate"}
    assert _errors(sections) == []
    assert not [name for name, section in sections.items() if "skipped" in section]
    # (a) the BiomedCLIP-shaped model's layout, from the tensor cache and from PNG at both batch sizes
    assert sections["setup"]["biomedclip"]["shape"]["timm_model"] == "test_vit"
    assert {"cache_bs4", "cache_bs8", "png_bs4", "png_bs8"} <= set(sections["biomedclip"])
    assert all(sections["biomedclip"][key]["images"] == 12 for key in ("cache_bs4", "png_bs8"))
    # (b) seconds per epoch of 3,818 images at the study's batch and the large one
    assert all(sections["ft"][key]["epoch_3818_train_seconds"] > 0
               for key in ("study_fp32", "study_recipe", "study_recipe_large", "multilabel", "multilabel_large"))
    # (c) both paths find the same neighbours
    knn = sections["knn"]
    assert knn["gpu_search"]["search"] == "exact (torch, cpu)" and knn["cpu_search"]["search"] == "exact"
    assert knn["identical_sets_share"] == 1.0 and knn["check_max_cosine_difference"] <= 1e-6
    # (d) the whole study ran through its report
    study = sections["study"]
    assert study["report_written"] is True and study["study_seconds"] > 0
    assert {"ingest", "extract zs study", "extract lp study", "extract ft study", "analyze", "gradcam validate study",
            "gradcam maps", "charts", "report"} <= set(study["steps"])
    table = (out / "gpu.md").read_text()
    assert "SMOKE RUN" in table and "| goal | measured | verdict |" in table
    assert "| section | figure | value | note |" in table and "| study | whole study, ingest → report" in table
    assert table.count("\n| ") >= len(report["table"]) + 3


def test_mapped_subpackages_import_from_the_repo_root_alone() -> None:
    """As on a bare GPU machine (PYTHONPATH=<repo root>, nothing installed), `map_source_packages`
    registers analyses/ and sql/ as `embedstore.analyses` and `embedstore.sql`."""
    code = f"""
import importlib.util, sys
sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") != "_EditableFinder"]  # no install
sys.path.insert(0, {str(REPO)!r})
spec = importlib.util.spec_from_file_location("gpu_bench", {str(REPO / "bench" / "gpu.py")!r})
bench = sys.modules["gpu_bench"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
assert importlib.util.find_spec("embedstore.analyses") is None
print(bench.map_source_packages("embedstore.analyses", "embedstore.sql"))
from embedstore.analyses.knn_search import neighbours
from embedstore import queries
print(len(queries.all_queries()), neighbours.__module__, bench.map_source_packages("embedstore.analyses"))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-2000:]
    registered, found = result.stdout.strip().splitlines()
    assert registered == "['embedstore.analyses', 'embedstore.sql']"
    count, module, again = found.split(" ", 2)
    assert int(count) > 10 and module == "embedstore.analyses.knn_search" and again == "[]"


def test_the_study_section_records_a_skip_when_the_store_dependencies_are_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a bare GPU machine without the store's wheels, `study` is a skipped row naming them, not a failure."""
    import torch

    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", gpu)
    spec.loader.exec_module(gpu)
    monkeypatch.setattr(gpu, "STUDY_PACKAGES", {"json": "in-the-stdlib", "no_such_module_here": "no-such-wheel"})
    bench = gpu.Bench(argparse.Namespace(out=tmp_path, smoke=True, max_seconds=60.0), gpu.SMOKE, torch.device("cpu"))
    gpu.run_section(bench, "study", gpu.study)
    note = "skipped: needs no-such-wheel (carry their wheels)"
    assert bench.report["sections"]["study"]["skipped"] == note and bench.failures == []
    assert f"| study | whole study end to end | skipped | {note} |" in (tmp_path / "gpu.md").read_text()


def test_analysis_benchmark_runs_at_a_small_size_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "analyze.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "analyze.py"), "--sizes", "1500", "--bootstrap",
                             "20", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["n"] == 1500 and row["peak_rss_mib"] > 0
    assert {scope: found["search"] for scope, found in row["search"].items()} == {"within": "exact",
                                                                                   "test_to_train": "exact"}
    assert row["study_way"] == "measured" and row["multilabel_with_intervals_s"] >= row["load_s"]


def test_index_comparison_benchmark_runs_at_a_small_size() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "knn_indexes.py"), "--pool", "4000", "--queries",
                             "4000"], capture_output=True, text=True, timeout=300, cwd=REPO / "bench")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["index"].split(" ")[0] for row in rows} == {"exact", "IVF-flat", "IVF-PQ", "HNSW"}
    assert all(0 <= row["recall_at_10"] <= 1 for row in rows if "recall_at_10" in row)

