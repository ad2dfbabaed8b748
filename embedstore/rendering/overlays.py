"""Grad-CAM images: a map over the image the model saw (with the expert's region outlined), and
the study's grid figure of labels × settings. Drawing only: the maps come from `embedstore.cam`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstore.atomic import atomic_path


def overlay(pixels: np.ndarray, cam_map: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The map (H × W, values in [0, 1]) as a heat map over the image the model saw (uint8
    C × H × W); the expert's region (boolean H × W) outlined in white when given. Returns RGB
    uint8 H × W × 3."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = pixels.transpose(1, 2, 0).astype(np.float32) / 255.0
    drawn = np.ascontiguousarray(show_cam_on_image(rgb, cam_map, use_rgb=True))
    if region is not None and region.any():
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(drawn, contours, -1, (255, 255, 255), 1)
    return drawn


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an RGB array as a PNG, atomically."""
    from PIL import Image

    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def grid_figure(path: Path, title: str, labels: list[str], columns: list[str],
                panels: dict[tuple[str, str], tuple[np.ndarray, str]]) -> None:
    """The study's figure: one row per label, one column per setting, each panel an overlay with
    its caption (the label's probability) in the title. `panels[(label, column)]` = (image, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(labels), len(columns), figsize=(2.6 * len(columns), 3.0 * len(labels) + 0.4),
                                squeeze=False)
    for i, label in enumerate(labels):
        for j, column in enumerate(columns):
            axis = axes[i][j]
            image, caption = panels[(label, column)]
            axis.imshow(image)
            axis.set_title(f"{column}\n{label}: {caption}", fontsize=8)
            axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path, durable=False) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
