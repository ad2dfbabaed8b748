"""Nearest neighbours (cosine) of one split's samples within a pool split, for neighbour agreement.

Three ways, one result: the ids of each query's k nearest pool samples, never itself and, with
`SameUid`, never another image of its uid (near-duplicates of one examination).

- **exact** (CPU, FAISS's BLAS inner-product search against the pool streamed batch by batch): while
  queries × pool stays under EXACT_PAIRS_LIMIT;
- **IVF** (CPU, FAISS inverted file over 4-bit product-quantised codes scanned by SIMD, candidates
  re-ranked by inner product with float16 copies of the vectors; approximate): above it. The pool
  is streamed into the index in batches, never held as a matrix beside it. Its recall@k against exact search is measured on a
  seeded sample of RECALL_QUERIES queries, and `nprobe` and the re-ranked candidates doubled until
  the recall reaches RECALL_GOAL (or NPROBE_CAP_SHARE of the lists are probed and MAX_REFINE times
  the candidates re-ranked: the figures' params then say the goal was missed); nlist, nprobe, the
  refine factor and the recall are recorded in every figure's params;
- **torch** (exact matrix product + top-k on a CUDA device when one is present): the pool streamed
  to the device, queries in blocks; the same neighbours as exact FAISS (cosine to 1e-6).

Among neighbours at exactly the same similarity the lower sample id comes first (on the torch path as
long as fewer than TIE_MARGIN of them tie at the cut), so exact results do not depend on the order the
store streams the pool in or on the device; IVF trains on rows chosen by a seeded hash of
their sample ids (the same rows whatever the order), and only its choice among candidates at exactly
equal quantised distance follows the stream order (the store's scan order, the same on every read
of one store). FAISS is imported only by the CPU paths (the
torch path runs where only torch is installed, as on a bare GPU machine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedstore.choices import SearchDevice
from embedstore.errors import InputError

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

#: Above this many query × pool pairs, exact CPU search gives way to IVF (about 3 s of exact search on 2 cores).
EXACT_PAIRS_LIMIT = 1e9

#: Recall@k that IVF must reach on the sampled queries, and how many queries are sampled to measure it.
RECALL_GOAL = 0.95
RECALL_QUERIES = 1000

#: IVF starts at this nprobe and doubles up to this share of its lists before giving up on the goal.
FIRST_NPROBE = 16
NPROBE_CAP_SHARE = 1 / 4

#: The most inverted lists an IVF index gets (2·sqrt(pool) below that); how many times the k asked for
#: it fetches by product-quantised distance before re-ranking them exactly (doubled with nprobe, up to
#: MAX_REFINE).
MAX_NLIST = 2048
FIRST_REFINE = 10
MAX_REFINE = 160

#: Candidates (queries × refine factor × depth) per block of an IVF search: bounds FAISS's buffers.
QUERY_BLOCK_CANDIDATES = 4_000_000

#: Similarity cells per block of the torch search (queries × pool; 1 GiB of float32), and how many
#: candidates beyond the depth it fetches so that neighbours tied at the cut are ordered by id.
TORCH_BLOCK_CELLS = 2**28
TIE_MARGIN = 16

Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class SameUid:
    """Which samples share a uid (one examination): a query's neighbours never come from its own uid,
    whose frontal images are near-duplicates of each other."""

    sample_ids: np.ndarray  # sorted, as in RunData
    groups: np.ndarray  # integer group code per sample

    @classmethod
    def of(cls, sample_ids: np.ndarray, uids: np.ndarray) -> SameUid:
        return cls(sample_ids, np.unique(uids, return_inverse=True)[1])

    @property
    def largest(self) -> int:
        return int(np.bincount(self.groups).max()) if len(self.groups) else 1

    def group_of(self, ids: np.ndarray) -> np.ndarray:
        return self.groups[np.clip(np.searchsorted(self.sample_ids, ids), 0, len(self.sample_ids) - 1)]


def unit32(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as a new contiguous float32 array (inner product = cosine)."""
    unit = np.array(x, dtype=np.float32, order="C", copy=True)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), np.float32(1e-30))
    return unit


def _depth(k: int, same_uid: SameUid | None) -> int:
    """How many candidates to fetch so that k remain after the query and its uid are dropped."""
    return k + (1 if same_uid is None else same_uid.largest)


def _ordered(similarity: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Candidates by similarity, the lower id first among exact ties (-1: none)."""
    order = np.lexsort((np.where(found < 0, np.iinfo(np.int64).max, found), -similarity), axis=1)
    return np.take_along_axis(found, order, axis=1)


def keep_neighbours(found: np.ndarray, query_ids: np.ndarray, k: int, same_uid: SameUid | None) -> np.ndarray:
    """The first k candidates that are neither the query nor (with `same_uid`) of its uid; -1 pads."""
    keep = (found != query_ids[:, None]) & (found >= 0)
    if same_uid is not None:
        keep &= same_uid.group_of(found) != same_uid.group_of(query_ids)[:, None]
    first_kept = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(np.where(keep, found, -1), first_kept, axis=1)


def exact_candidates(unit_queries: np.ndarray, batches: Batches, depth: int) -> np.ndarray:
    """Exact top-`depth` pool ids of each query, the pool streamed batch by batch (never held whole)."""
    import faiss

    best_similarity = np.full((len(unit_queries), 0), -np.inf, dtype=np.float32)
    best = np.full((len(unit_queries), 0), -1, dtype=np.int64)
    for ids, vectors in batches():
        by_id = np.argsort(ids, kind="stable")  # FAISS keeps the lower row among equal similarities: the lower id
        ids = np.asarray(ids, dtype=np.int64)[by_id]
        similarity, rows = faiss.knn(unit_queries, unit32(vectors[by_id]), min(depth, len(ids)),
                                     metric=faiss.METRIC_INNER_PRODUCT)
        found = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
        best_similarity = np.concatenate([best_similarity, similarity], axis=1)
        best = np.concatenate([best, found], axis=1)
        order = np.lexsort((best, -best_similarity), axis=1)[:, :depth]
        best_similarity = np.take_along_axis(best_similarity, order, axis=1)
        best = np.take_along_axis(best, order, axis=1)
    return best


@dataclass
class IvfIndex:
    """FAISS's IVF with 4-bit product-quantised codes scanned by SIMD ("fast scan"), whose candidates
    (a refine factor × the depth asked for) are re-ranked by inner product with the vectors kept in
    float16 (half the memory of float32): the pool's rows in the order they were added, and their sample ids."""

    index: faiss.Index
    ids: np.ndarray
    nlist: int
    pq: str

    def search(self, unit_queries: np.ndarray, depth: int, nprobe: int, refine: int) -> np.ndarray:
        import faiss

        parameters = faiss.IndexRefineSearchParameters(  # type: ignore[call-arg]
            k_factor=refine, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))  # type: ignore[call-arg]
        found = np.empty((len(unit_queries), depth), dtype=np.int64)
        block = max(1, QUERY_BLOCK_CANDIDATES // (refine * depth))  # FAISS holds every query's candidates at once
        for start in range(0, len(unit_queries), block):
            similarity, rows = self.index.search(unit_queries[start:start + block], depth, params=parameters)
            found[start:start + block] = _ordered(similarity, np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1))
        return found


def _seeded_share(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random number in [0, 1) per sample id (a 64-bit multiplicative hash): which rows
    train the index does not depend on the order the store streams the pool in."""
    with np.errstate(over="ignore"):  # the hash wraps modulo 2**64 by design
        mixed = (ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(31)
        mixed *= np.uint64(0x94D049BB133111EB)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(2**53)


def ivf_index(batches: Batches, pool_size: int, seed: int) -> IvfIndex:
    """An IVF-PQ fast-scan index with float16 re-ranking over the pool, trained on a seeded sample (two
    streamed passes over the pool; the index keeps the pool's vectors once, in float16, for the re-ranking)."""
    import faiss

    nlist = int(np.clip(2 * np.sqrt(pool_size), 16, MAX_NLIST))
    share = min(1.0, 40 * nlist / max(pool_size, 1))
    sample, sample_ids = [], []
    for ids, vectors in batches():
        chosen = _seeded_share(np.asarray(ids, dtype=np.int64), seed) < share
        sample.append(unit32(vectors[chosen]))
        sample_ids.append(np.asarray(ids, dtype=np.int64)[chosen])
    training = np.concatenate(sample)[np.argsort(np.concatenate(sample_ids), kind="stable")]
    dim = training.shape[1]
    codes = next(m for m in (dim // 4, dim // 2, dim) if m > 0 and dim % m == 0)
    pq = f"IVF{nlist},PQ{codes}x4fs"
    base = faiss.index_factory(dim, pq, faiss.METRIC_INNER_PRODUCT)
    clustering = faiss.extract_index_ivf(base).cp
    clustering.seed, clustering.niter = seed, 10
    clustering.min_points_per_centroid = 1  # small pools: no warning
    rerank = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    rerank.codes.resize(pool_size * dim * 2)  # its full size at once: growing batch by batch would copy it
    rerank.codes.resize(0)
    index = faiss.IndexRefine(base, rerank)
    index.train(training)
    added: list[np.ndarray] = []
    for batch_ids, vectors in batches():
        index.add(unit32(vectors))
        added.append(np.asarray(batch_ids, dtype=np.int64))
    return IvfIndex(index, np.concatenate(added), nlist, pq)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact neighbours that the approximate search found."""
    shares = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, int((e >= 0).sum())) for a, e in zip(approximate, exact,
                                                                                                     strict=True)]
    return float(np.mean(shares)) if shares else 1.0


def _tuned_ivf(unit_queries: np.ndarray, query_ids: np.ndarray, batches: Batches, pool_size: int, k: int,
               same_uid: SameUid | None, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Neighbours from an IVF index whose nprobe reaches RECALL_GOAL on a seeded query sample, and what
    it measured."""
    ivf = ivf_index(batches, pool_size, seed)
    depth = _depth(k, same_uid)
    sampled = np.sort(np.random.default_rng(seed).choice(len(unit_queries), min(len(unit_queries), RECALL_QUERIES),
                                                         replace=False))
    exact = keep_neighbours(exact_candidates(unit_queries[sampled], batches, depth), query_ids[sampled], k, same_uid)
    cap = max(FIRST_NPROBE, int(ivf.nlist * NPROBE_CAP_SHARE))
    nprobe, refine = FIRST_NPROBE, FIRST_REFINE
    while True:
        approximate = keep_neighbours(ivf.search(unit_queries[sampled], depth, nprobe, refine), query_ids[sampled],
                                      k, same_uid)
        recall = recall_at_k(approximate, exact)
        if recall >= RECALL_GOAL or (nprobe >= cap and refine >= MAX_REFINE):
            break
        nprobe, refine = min(cap, nprobe * 2), min(MAX_REFINE, refine * 2)
    met = recall >= RECALL_GOAL
    if not met:
        log.warning("warning: approximate neighbour search reaches recall@%d %.3f (goal %.2f) at nprobe %d of %d "
                    "lists; the neighbour figures' params say so", k, recall, RECALL_GOAL, nprobe, ivf.nlist)
    found = keep_neighbours(ivf.search(unit_queries, depth, nprobe, refine), query_ids, k, same_uid)
    return found, {"search": f"IVF approximate ({ivf.pq}, nprobe {nprobe}, float16 re-ranking of "
                             f"{refine}x the candidates)", "nlist": ivf.nlist, "nprobe": nprobe,
                   "refine_factor": refine, "recall_at_k": round(recall, 4), "recall_queries": len(sampled),
                   "recall_goal": RECALL_GOAL, "recall_goal_met": met}


def _torch_candidates(unit_queries: np.ndarray, batches: Batches, depth: int, device: str) -> np.ndarray:
    """Exact top-`depth` pool ids by matrix product + top-k in torch on `device`."""
    import torch

    ids_parts, vector_parts = [], []
    for ids, vectors in batches():
        ids_parts.append(np.asarray(ids, dtype=np.int64))
        vector_parts.append(torch.from_numpy(unit32(vectors)).to(device))
    pool = torch.cat(vector_parts)
    pool_ids = torch.from_numpy(np.concatenate(ids_parts)).to(device)
    wanted = depth
    depth = min(depth + TIE_MARGIN, len(pool))  # top-k's order among ties is undefined: fetch more, order by id
    block = max(1, TORCH_BLOCK_CELLS // max(1, len(pool)))
    found = np.empty((len(unit_queries), depth), dtype=np.int64)
    similarity = np.empty((len(unit_queries), depth), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(unit_queries), block):
            queries = torch.from_numpy(unit_queries[start:start + block]).to(device)
            values, rows = torch.topk(queries @ pool.T, depth, dim=1)
            similarity[start:start + block] = values.cpu().numpy()
            found[start:start + block] = pool_ids[rows].cpu().numpy()
    return _ordered(similarity, found)[:, :wanted]


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch is imported only where an NVIDIA device node exists)."""
    from pathlib import Path

    if not Path("/dev/nvidiactl").exists():
        return False
    import torch

    return bool(torch.cuda.is_available())


def neighbours(queries: np.ndarray, query_ids: np.ndarray, pool: Batches, pool_size: int, k: int,
               same_uid: SameUid | None = None, seed: int = 0,
               device: SearchDevice = SearchDevice.AUTO) -> tuple[np.ndarray, dict[str, Any]]:
    """Ids (queries × k, -1 where fewer exist) of each query's k nearest pool samples, and how they
    were searched (params for the figures)."""
    unit_queries = unit32(queries)
    depth = _depth(k, same_uid)
    if device == SearchDevice.CUDA and not cuda_available():
        raise InputError("search_device cuda: torch sees no CUDA device here; use auto or cpu",
                         parameter="search_device")
    use_torch = device == SearchDevice.CUDA or (device == SearchDevice.AUTO and cuda_available())
    if use_torch or device == SearchDevice.TORCH_CPU:
        import torch

        where = "cpu" if device == SearchDevice.TORCH_CPU else "cuda"
        try:
            found = _torch_candidates(unit_queries, pool, depth, where)
            return keep_neighbours(found, query_ids, k, same_uid), {"search": f"exact (torch, {where})"}
        except (MemoryError, torch.OutOfMemoryError) as error:
            if device != SearchDevice.AUTO:
                raise InputError(f"search_device {device}: out of memory for a pool of {pool_size:,} vectors "
                                 f"({str(error).splitlines()[0][:120]}); use cpu", parameter="search_device") from None
            log.warning("warning: the GPU ran out of memory for a pool of %s vectors; searching on the CPU",
                        f"{pool_size:,}")
    if len(queries) * pool_size <= EXACT_PAIRS_LIMIT:
        found = exact_candidates(unit_queries, pool, depth)
        return keep_neighbours(found, query_ids, k, same_uid), {"search": "exact"}
    return _tuned_ivf(unit_queries, query_ids, pool, pool_size, k, same_uid, seed)
