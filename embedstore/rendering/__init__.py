"""Presentation of stored results: tables, charts, the HTML report, pages and Grad-CAM overlays.
Nothing here computes a figure; everything reads what `analyze`, `extract` and `gradcam validate`
stored (see docs/report.md)."""
