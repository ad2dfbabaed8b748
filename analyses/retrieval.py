"""Image–report retrieval of zs runs: each image of the analysed split ranks the split's reports, and each
report ranks the split's images, by cosine similarity of the run's image and report embeddings.

The images are the split's samples that have a report embedding (a sample without report text takes
no part); a study's films share one report, which is in the report gallery once and queries once. A
retrieved item counts as a hit when it belongs to the query's study (same uid). A query's rank is that
of its first hit, with ties broken pessimistically: every item of another study at least as similar
as the query's best hit is ranked ahead of it. Recall@K is the share of queries whose rank is at most
K; the median rank is the median over queries. Intervals resample studies, a study's films together
(the gallery stays the whole split).

The similarities are computed a block of queries at a time (SIMILARITY_BLOCK_CELLS), so memory stays
bounded for a split of any size.
"""

from __future__ import annotations

import numpy as np

from embedstore.analyses.common import AnalysisOptions, MetricRow, resampling_strata, with_intervals
from embedstore.analyses.rundata import RunData
from embedstore.errors import IntegrityError

#: The cut-offs of recall@K.
RECALL_KS = (1, 5, 10)
#: Query × gallery similarities held at once (float32: 64 MiB), and at most this many queries per block.
SIMILARITY_BLOCK_CELLS = 1 << 24
MAX_BLOCK_QUERIES = 4096
#: The two directions: (metric prefix, what queries, what is retrieved).
DIRECTIONS = (("image_to_report", "images", "reports"), ("report_to_image", "reports", "images"))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero (similarity 0 to everything)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def first_hit_ranks(queries: np.ndarray, gallery: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray,
                    block_cells: int = SIMILARITY_BLOCK_CELLS) -> np.ndarray:
    """Per query, the 1-based rank of its first hit among the gallery by dot product: 1 + the gallery
    items of another group at least as similar as the query's most similar item of its own group (ties
    count against the query). Every query needs an item of its group in the gallery. Queries are
    taken a block at a time, so at most about `block_cells` similarities are held."""
    n, m = len(queries), len(gallery)
    order = np.argsort(gallery_groups, kind="stable")
    sorted_groups = gallery_groups[order]
    starts = np.searchsorted(sorted_groups, query_groups, side="left")
    counts = np.searchsorted(sorted_groups, query_groups, side="right") - starts
    if n and counts.min() < 1:
        raise IntegrityError("a retrieval query has no item of its own study in the gallery")
    ranks = np.empty(n, dtype=np.int64)
    rows_per_block = int(max(1, min(MAX_BLOCK_QUERIES, block_cells // max(m, 1))))
    for begin in range(0, n, rows_per_block):
        end = min(n, begin + rows_per_block)
        similarity = queries[begin:end] @ gallery.T
        own = counts[begin:end]
        row = np.repeat(np.arange(end - begin), own)
        offsets = np.arange(int(own.sum())) - np.repeat(np.cumsum(own) - own, own)
        column = order[np.repeat(starts[begin:end], own) + offsets]
        hit_values = similarity[row, column]
        best = np.full(end - begin, -np.inf, dtype=similarity.dtype)
        np.maximum.at(best, row, hit_values)
        at_least = (similarity >= best[:, None]).sum(axis=1)
        own_at_least = np.bincount(row, weights=hit_values >= best[row], minlength=end - begin).astype(np.int64)
        ranks[begin:end] = 1 + at_least - own_at_least
    return ranks


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of `values` per row of integer `weights` (resamples × values): the median of the multiset
    each row describes (the mean of the two middle values when its size is even), as np.median."""
    order = np.argsort(values, kind="stable")
    ordered = values[order].astype(np.float64)
    cumulative = np.cumsum(weights[:, order], axis=1)
    total = cumulative[:, -1]
    lower = np.minimum((cumulative <= ((total - 1) // 2)[:, None]).sum(axis=1), len(values) - 1)
    upper = np.minimum((cumulative <= (total // 2)[:, None]).sum(axis=1), len(values) - 1)
    return (ordered[lower] + ordered[upper]) / 2


def paired_embeddings(run: RunData, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sample_ids, image vectors, report vectors, study codes) of the split's samples with a report
    embedding, in sample order; no rows for a run without report embeddings."""
    report_ids, reports = run.report_vectors(split)
    if len(report_ids) == 0:
        return report_ids, np.zeros((0, 0), np.float32), reports, np.zeros(0, np.int64)
    mask = run.split(split)
    split_ids = run.sample_ids[mask]
    rows = np.clip(np.searchsorted(split_ids, report_ids), 0, len(split_ids) - 1)
    if not np.array_equal(split_ids[rows], report_ids):
        raise IntegrityError(f"run {run.run_id}: a report embedding belongs to no sample of split {split}; "
                             "run `embedstore store verify`")
    images = run.vectors(split)
    images = images if len(rows) == len(split_ids) else images[rows]
    uids = run.uids[mask][rows] if run.uids is not None else report_ids.astype(str)
    return report_ids, images, reports, np.unique(uids, return_inverse=True)[1].astype(np.int64)


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Recall@1/5/10 and median rank in both directions on the analysed split, with bootstrap intervals
    over queries; nothing for a run without report embeddings."""
    ids, images, reports, studies = paired_embeddings(run, options.split)
    if len(ids) == 0:
        return []
    images, reports = unit_rows(images), unit_rows(reports)
    # A study's films share one report: it is one report, in the gallery once and a query once.
    first = np.unique(studies, return_index=True)[1]
    study_reports, study_codes = reports[first], studies[first]
    ranks = {"image_to_report": first_hit_ranks(images, study_reports, studies, study_codes),
             "report_to_image": first_hit_ranks(study_reports, images, study_codes, studies)}
    query_studies = {"image_to_report": studies, "report_to_image": study_codes}
    del images, reports

    def figures(weights: np.ndarray) -> dict[str, np.ndarray]:
        """Studies are resampled (weights: resamples × studies); a study's films go with it."""
        out: dict[str, np.ndarray] = {}
        for direction, rank in ranks.items():
            per_query = weights[:, query_studies[direction]]
            total = per_query.sum(axis=1)
            for k in RECALL_KS:
                out[f"retrieval.{direction}.recall_at_{k}"] = per_query @ (rank <= k).astype(np.float64) / total
            out[f"retrieval.{direction}.median_rank"] = weighted_median(rank, per_query)
        return out

    n_studies = len(first)
    point = {name: float(values[0]) for name, values in figures(np.ones((1, n_studies))).items()}
    params = {"images": len(ids), "reports": n_studies, "studies": n_studies, "similarity": "cosine",
              "hit": "the query's study (same uid): its one report, or any of its films",
              "ties": "pessimistic", "resampled": "studies"}
    params_of = {f"retrieval.{direction}.recall_at_{k}": {"k": k, "queries_are": queried, "retrieved": retrieved}
                 for direction, queried, retrieved in DIRECTIONS for k in RECALL_KS}
    params_of |= {f"retrieval.{direction}.median_rank": {"queries_are": queried, "retrieved": retrieved}
                  for direction, queried, retrieved in DIRECTIONS}
    targets = run.targets[np.searchsorted(run.sample_ids, ids[first])]
    return with_intervals(point, figures, n_studies, options, params=params, params_of=params_of,
                          strata=resampling_strata(targets, options))
