"""Reading back what ingest stored and what a chart inlined, and writing the tiny manifests tests ingest."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from embedstore.store import Store


def stored_samples(store: Store) -> pd.DataFrame:
    """Every sample row, in sample id order."""
    with store.reader() as con:
        return con.execute("SELECT sample_id, uid, filename, path, split, projection, patient, report FROM samples "
                           "ORDER BY sample_id").df()


def stored_values(store: Store) -> dict[str, dict[str, int | None]]:
    """filename -> label -> the raw value as stored (`labels.value`)."""
    with store.reader() as con:
        rows = con.execute("SELECT s.filename, l.label, l.value FROM labels l JOIN samples s USING (sample_id)").fetchall()
    out: dict[str, dict[str, int | None]] = {}
    for filename, label, value in rows:
        out.setdefault(filename, {})[label] = value
    return out


def write_manifest(folder: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> Path:
    """`folder/manifest.csv` with `rows` under `header` (the first row's keys by default)."""
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def stored_label_rows(store: Store, name: str) -> pd.DataFrame:
    """One row per (sample, label) of dataset `name`: uid, filename, path, split, patient, projection,
    label and the raw value."""
    with store.reader() as con:
        return con.execute(
            "SELECT s.uid, s.filename, s.path, s.split, s.patient, s.projection, l.label, l.value FROM labels l "
            "JOIN samples s USING (sample_id) JOIN datasets d ON d.dataset_id = s.dataset_id WHERE d.name = ?",
            [name]).df()


def chart_values(spec: dict) -> list[dict]:
    """Every inline data row of a Vega-Lite spec, wherever it sits (layers, facets, datasets)."""
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("values"), list):
                found.extend(node["values"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(spec)
    return found
