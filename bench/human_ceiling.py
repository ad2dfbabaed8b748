"""The human ceiling of localisation on VinDr-CXR: radiologists against each other (docs/human_ceiling.md).

Every image of VinDr-CXR's training set was read by three of seventeen radiologists, each boxing the
findings they saw (or writing "No finding"). For every (image, finding) that at least one reader boxed,
each reader is held out in turn against the union of the other readers' boxes, exactly as
`embedstore.analyses.readers` scores a model's map: mIoU, hit rate and box IoU, per finding and over
all, with 95 % cluster-bootstrap intervals over images. The boxes come with the dev dependency
torchxrayvision (`torchxrayvision/data/vinbigdata-train.csv.gz`).

Usage: .venv/bin/python bench/human_ceiling.py [--csv PATH] [--bootstrap 1000] [--seed 0] [--subset N] [--out JSON]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from embedstore.analyses.readers import (
    FIGURES,
    OVERALL,
    agreement_from_boxes,
    subset_images,
    summarise_agreement,
    vindr_boxes,
)

DEFINITIONS = {
    "reader_record": "one per (image, finding, reader) where at least one OTHER reader of the image boxed the "
                     "finding; readers of an image are every rad_id with any row for it, a 'No finding' row "
                     "meaning read, nothing drawn",
    "reference": "the union of the other readers' boxes for that (image, finding), rasterised at original resolution "
                 "(pixel (y, x) inside a box when (y+0.5, x+0.5) lies in [y_min, y_max) x [x_min, x_max))",
    "miou": "mean over records of IoU(reader's boxes as one region, reference); a reader who drew nothing scores 0",
    "hit_rate": "share of records whose reader's representative point lies in the reference: the pixel holding the centroid "
                "of the reader's region if that pixel is in the region, else the region's pixel nearest the centroid "
                "(ties: lowest row-major index); a reader who drew nothing misses",
    "box_iou": "mean over every box of every reader of its best continuous-geometry IoU with any box of another reader "
               "of the same (image, finding); 0 when the others drew none",
    "rows_reader_drew": "the same figures on the records whose held-out reader boxed the finding as well "
                        "(agreement on where, given that both saw it); box IoU is not restricted",
    "interval": "95 % percentile bootstrap interval resampling images (cluster bootstrap: all records and boxes of a drawn "
                "image go together), numpy default_rng(seed), the group's images in sorted order",
}


def default_csv() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torchxrayvision is not installed: pass --csv PATH to VinDr-CXR's train box file")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "vinbigdata-train.csv.gz"


def file_facts(path: Path) -> dict[str, Any]:
    """The file's sha256 and data rows, so that a figure can be traced to the exact file."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in handle) - 1
    try:
        source = f"torchxrayvision {version('torchxrayvision')}"
    except PackageNotFoundError:
        source = None
    return {"file": path.name, "package": source, "sha256": digest, "rows": rows}


def cell(row: dict[str, Any], name: str) -> str:
    if row[name] is None:
        return "–"
    if row[f"{name}_low"] is None:
        return f"{row[name]:.3f}"
    return f"{row[name]:.3f} [{row[f'{name}_low']:.3f}, {row[f'{name}_high']:.3f}]"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| finding | images | records | boxes | mIoU [95 % CI] | hit rate [95 % CI] | box IoU [95 % CI] |",
             "|---|---:|---:|---:|---|---|---|"]
    for row in rows:
        name = "**all findings**" if row["label"] == OVERALL else row["label"]
        boxes = "–" if row["n_boxes"] is None else f"{row['n_boxes']:,}"
        lines.append(f"| {name} | {row['n_images']:,} | {row['n_records']:,} | {boxes} | "
                     + " | ".join(cell(row, figure) for figure in FIGURES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=None, help="VinDr-CXR train boxes (default: torchxrayvision's copy)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="N images drawn with default_rng(seed) from the sorted ids")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    path = args.csv or default_csv()

    started = time.perf_counter()
    boxes, readers = vindr_boxes(path)
    parsed = time.perf_counter()
    images = subset_images(readers, args.subset, args.seed) if args.subset else set(readers)
    records, box_ious = agreement_from_boxes(boxes, readers, images)
    scored = time.perf_counter()
    rows = summarise_agreement(records, box_ious, args.bootstrap, args.seed)
    # the records whose held-out reader boxed the finding too: agreement on where, given both saw it
    drew = [r for r in records if r.reader in boxes[(r.image, r.label)]]
    rows_drew = summarise_agreement(drew, None, args.bootstrap, args.seed)
    done = time.perf_counter()

    command = "bench/human_ceiling.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    report = {
        "source": file_facts(path) | {
            "images": len(readers),
            "images_used": len(images),
            "readers": len({r for names in readers.values() for r in names}),
            "image_findings_boxed": sum(1 for image, _ in boxes if image in images),
        },
        "definitions": DEFINITIONS,
        "seed": args.seed,
        "bootstrap": args.bootstrap,
        "subset": args.subset,
        "command": f".venv/bin/python {command}",
        "seconds": {"parse": round(parsed - started, 2), "records": round(scored - parsed, 2),
                    "bootstrap": round(done - scored, 2), "total": round(done - started, 2)},
        "rows": rows,
        "rows_reader_drew": rows_drew,
    }
    print(table(rows))
    print("\nRecords whose held-out reader boxed the finding too:\n")
    print(table(rows_drew))
    print(f"\n{len(images):,} images, {len(records):,} reader records, {sum(map(len, box_ious.values())):,} boxes; "
          f"{report['seconds']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
