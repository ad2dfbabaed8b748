"""Nearest-neighbour label agreement (cosine), leave-one-out; the search itself is
embedstore/analyses/knn_search.py (exact, IVF with measured recall, or torch on a GPU).

For each query sample, its k nearest neighbours among the samples of the same split ("within"), and
among the train split ("test→train"): never itself, and under multilabel never another image of the
same uid (two frontal films of one examination are near-duplicates). Figures: mean label-set Jaccard
between a sample and its neighbours, per-label precision@k (share of a positive sample's neighbours that share
the label), and the kNN vote (share of neighbours with the label) scored as macro AUROC and as
macro F1 at a majority vote.

Pairs left out (`--uncertain ignore`) count nowhere: a neighbour's left-out label votes neither way
(a vote share is over the neighbours that know the label; 0 where none does, as for a query without
neighbours); a query's left-out label is left out of that label's AUROC, F1 and precision@k; the
Jaccard of a query and a neighbour is over the labels known for both.
"""

from __future__ import annotations

from functools import partial

import faiss
import numpy as np

from embedstore import queries
from embedstore.analyses import knn_search
from embedstore.analyses.classification import all_known, label_curves, label_sets, ranked_labels, thresholded
from embedstore.analyses.common import (
    AnalysisOptions,
    MetricRow,
    fixed_macro,
    resampling_strata,
    warn_few_resamples,
    with_intervals,
)
from embedstore.analyses.knn_search import SameUid
from embedstore.analyses.rundata import RunData
from embedstore.choices import Protocol
from embedstore.errors import InputError
from embedstore.store import Store, first_row
from embedstore.vector_index import index_relpath, read_index


def agreement(query_targets: np.ndarray, neighbour_targets: np.ndarray, valid: np.ndarray,
              query_known: np.ndarray | None = None, neighbour_known: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-query Jaccard and vote shares. neighbour_targets: queries × k × labels; valid: queries × k;
    query_known (queries × labels) and neighbour_known (queries × k × labels): False at pairs left out.
    A vote share counts the neighbours that know the label; a Jaccard the labels known for both."""
    if neighbour_known is None:
        voters = valid[:, :, None].astype(np.float64)
        count = np.maximum(valid.sum(axis=1), 1)[:, None]
    else:
        voters = valid[:, :, None] * neighbour_known.astype(np.float64)
        count = np.maximum(voters.sum(axis=1), 1)
    votes = (neighbour_targets * voters).sum(axis=1) / count
    union = np.maximum(query_targets[:, None, :], neighbour_targets)
    shared = np.minimum(query_targets[:, None, :], neighbour_targets)
    if query_known is not None or neighbour_known is not None:
        both = all_known(query_targets, query_known)[:, None, :] & all_known(neighbour_targets, neighbour_known)
        union, shared = union * both, shared * both
    union, shared = union.sum(-1), shared.sum(-1)
    jaccard = np.where(union > 0, shared / np.maximum(union, 1), 1.0)
    return {"jaccard": (jaccard * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1), "votes": votes}


def figures(targets: np.ndarray, neighbour_targets: np.ndarray, valid: np.ndarray, labels: list[str],
            options: AnalysisOptions, params: dict[str, object], known: np.ndarray | None = None,
            neighbour_known: np.ndarray | None = None) -> list[MetricRow]:
    """Jaccard, precision@k, vote AUROC and vote F1 with bootstrap intervals over query samples; a
    query's left-out label (`known` False) is left out of that label's figures."""
    result = agreement(targets, neighbour_targets, valid, known, neighbour_known)
    known = all_known(targets, known)
    defined = label_sets(targets, labels, known)
    jaccard, votes = result["jaccard"], result["votes"]
    predicted = (votes >= 0.5).astype(np.float64)
    tp, fp, fn = predicted * targets, predicted * (1 - targets), (1 - predicted) * targets
    if not known.all():
        tp, fp, fn = tp * known, fp * known, fn * known
    hits = votes * targets * known
    ranked = ranked_labels(votes, targets, known)

    def compute(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights.sum(axis=1)
        auroc = label_curves(ranked, weights)[0]
        positives = weights @ (targets * known)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision_at_k = np.where(positives > 0, (weights @ hits) / positives, np.nan)
        out = {
            "knn_jaccard": weights @ jaccard / total,
            "knn_vote_macro_auroc": fixed_macro(auroc, defined["auroc"]),
            "knn_vote_macro_f1": thresholded(tp, fp, fn, weights, known)["macro_f1"],
        }
        for j, label in enumerate(labels):
            out[f"knn_precision_at_k|{label}"] = precision_at_k[:, j]
        return out

    point = {name: float(values[0]) for name, values in compute(np.ones((1, len(targets)))).items()}
    params_of = {"knn_vote_macro_auroc": {"averaged_over": [labels[j] for j in defined["auroc"]],
                                          "rule": "labels with both classes in the split"},
                 "knn_vote_macro_f1": {"averaged_over": labels,
                                       "rule": "every label; one without positives counts as F1 0"}}
    return with_intervals({k: v for k, v in point.items() if np.isfinite(v)}, compute, len(targets), options,
                          params=params, params_of=params_of, strata=resampling_strata(targets, options))


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Within-split leave-one-out agreement, and the split's queries against the train split."""
    mask = run.split(options.split)
    rows: list[MetricRow] = []
    targets = run.targets.astype(np.float64)
    known = run.known_pairs
    masked = not known.all()
    pools = {"within": options.split, f"{options.split}_to_train": "train"}
    same_uid = None
    excluded = "the query itself"
    if options.protocol == Protocol.MULTILABEL and run.uids is not None:
        same_uid = SameUid.of(run.sample_ids, run.uids)
        excluded = "the query and every image of the same uid"
    if options.split == "train":
        pools.pop("train_to_train")
    query_ids = run.sample_ids[mask]
    for scope, pool_split in pools.items():
        pool_size = int(run.split(pool_split).sum())
        k = min(options.k, pool_size - 1)
        if k < 1:
            continue
        found, searched = knn_search.neighbours(run.vectors(options.split), query_ids,
                                                partial(run.vector_batches, pool_split), pool_size, k, same_uid,
                                                options.seed, options.search_device)
        valid = found >= 0
        rows_of = np.searchsorted(run.sample_ids, np.where(valid, found, run.sample_ids[0]))
        neighbour_targets = targets[rows_of] * valid[:, :, None]
        rows += figures(targets[mask], neighbour_targets, valid, run.labels, options,
                        {"k": k, "scope": scope, "metric": "cosine", "leave_one_out": True, "excluded": excluded}
                        | searched | ({"left_out_pairs": int((~known[mask]).sum())} if masked else {}),
                        known[mask] if masked else None, known[rows_of] if masked else None)
    rows = [MetricRow(f"{row.metric}:{row.params['scope']}", row.value, row.label, row.ci_low, row.ci_high,
                      row.n_resamples_skipped, row.params) for row in rows]
    warn_few_resamples(rows, options, run.run_id, {f"knn_vote_macro_auroc:{scope}" for scope in pools})
    return rows


def nearest(store: Store, run_id: str, sample: int | None = None, text: str | None = None,
            k: int = 10) -> list[dict[str, object]]:
    """The k nearest samples (cosine) of a sample's embedding or of a stored prompt embedding.

    Text queries use only text embeddings already in the store (zs runs store their prompts):
    answering never loads a model.
    """
    if k < 1:
        raise InputError(f"k {k}: the number of neighbours must be at least 1", parameter="k")
    with store.reader() as con:
        status = first_row(con, "SELECT status FROM runs WHERE run_id = ?", [run_id])
        if status is None or status[0] != "complete":
            raise InputError(f"run {run_id}: no complete run of that id in {store.path}")
        if sample is not None:
            found = first_row(con, "SELECT embedding FROM image_embeddings WHERE run_id = ? AND sample_id = ?",
                              [run_id, sample])
            if found is None:
                raise InputError(f"sample {sample}: not a sample of run {run_id}")
            vector, query = np.asarray(found[0], dtype=np.float32), f"sample {sample}"
        else:
            found = queries.fetch_one(con, "text_query_vector", run_id=run_id, text=text)
            if found is None:
                prompts = list(dict.fromkeys(r[1] for r in queries.fetch(con, "run_prompts", run_id=run_id)))[:6]
                stored = f"stored prompts include {', '.join(prompts)}" if prompts else "only zs runs store prompts"
                raise InputError(f"text {text!r}: run {run_id} has no stored text embedding for it ({stored}); "
                                 "embedstore answers from stored vectors and never loads a model here")
            vector, query = np.asarray(found[1], dtype=np.float32), f"prompt {found[0]!r}"
    index = read_index(store.resolve(index_relpath(run_id)))
    unit = vector[None, :].copy()
    faiss.normalize_L2(unit)
    similarity, ids = index.search(unit, k + (sample is not None))
    pairs = [(int(i), float(s)) for i, s in zip(ids[0], similarity[0], strict=True) if i >= 0 and i != sample][:k]
    with store.reader() as con:
        details = {row[0]: row[1:] for row in queries.fetch(con, "sample_details", ids=[i for i, _ in pairs])}
    return [{"rank": rank, "query": query, "sample_id": i, "similarity": round(s, 4), "split": details[i][1],
             "labels": ", ".join(details[i][2]), "filename": details[i][0]}
            for rank, (i, s) in enumerate(pairs, start=1)]
