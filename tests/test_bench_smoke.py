"""The GPU benchmark's script runs end to end on a CPU at tiny sizes (`bench/gpu.py --smoke`), so it
cannot rot between the rare sessions that have a GPU: every section finishes without an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["env"]["smoke"] is True
    assert set(report["sections"]) >= {"study_encode", "batched", "cache", "decode", "lp", "ft", "text", "estimate"}
    assert _errors(report["sections"]) == []
