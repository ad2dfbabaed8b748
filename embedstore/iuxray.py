"""File layout of an IU-Xray copy (the study's CSV and the Kaggle pair), shared by reader and generator."""

from __future__ import annotations

from pathlib import Path

STUDY_CSV = "iuxray_frontal_14labels.csv"
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
IMAGE_DIR = Path("images") / "images_normalized"
TEXT_COLUMNS = ("indication", "comparison", "findings", "impression")
