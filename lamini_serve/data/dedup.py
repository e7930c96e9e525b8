"""Dedup in layers: exact (after normalization), then MinHash-LSH near-duplicates.

The MinHash is vectorized with numpy over 5-byte shingles of the normalized UTF-8
text (short instructions have few words; byte shingles still see a one-word
edit as a small change), so a million instructions take minutes on two cores
and a few hundred MB. Within each group of duplicates the first row is kept
(seeds come before generated rows, so they win) and every other row gets a
reason naming the row it duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lamini_serve.data.text import normalize
from lamini_serve.errors import LaminiError

_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # estimated Jaccard of 5-byte shingles above which two rows are near-duplicates
    num_perm: int = 64
    bands: int = 21  # 21 bands of 3 rows: a pair at Jaccard 0.6 becomes a candidate with p > 0.99
    shingle: int = 5
    seed: int = 1
    chunk_rows: int = 100_000

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise LaminiError(f"dedup threshold must be in (0, 1], got {self.threshold}")
        if self.bands < 1 or self.num_perm < self.bands:
            raise LaminiError(f"need 1 <= bands <= num_perm, got bands={self.bands}, num_perm={self.num_perm}")


def exact_duplicates(texts: Sequence[str]) -> list[int | None]:
    """For each row, the index of the first row with the same normalized text (None for firsts)."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, t in enumerate(texts):
        key = normalize(t)
        j = first.setdefault(key, i)
        out.append(None if j == i else j)
    return out


def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, shingle: int = 5, seed: int = 1,
                       chunk_rows: int = 100_000) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of 5-byte shingles of the normalized UTF-8 texts."""
    a, b = _perm_params(num_perm, seed)
    sigs = np.empty((len(texts), num_perm), dtype=np.uint32)
    for start in range(0, len(texts), chunk_rows):
        chunk = texts[start:start + chunk_rows]
        sigs[start:start + len(chunk)] = _signatures_chunk(chunk, a, b, shingle)
    return sigs


def _signatures_chunk(texts: Sequence[str], a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    # Normalized texts shorter than a shingle are padded so every row has at least one.
    encoded = [normalize(t).encode("utf-8").ljust(k) for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    n_pos = len(buf) - k + 1
    codes = np.zeros(n_pos, dtype=np.uint64)
    for j in range(k):  # the k bytes of each window packed into one integer
        codes |= buf[j:j + n_pos] << np.uint64(8 * j)
    # Keep the windows that lie inside one row: row r owns starts[r] .. ends[r]-k.
    counts = lengths - k + 1
    keep = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) if len(counts) else np.empty(0, np.int64)
    codes = codes[keep]
    codes = codes * np.uint64(0x9E3779B97F4A7C15)  # spread the packed bytes over 64 bits
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out = np.empty((len(texts), len(a)), dtype=np.uint32)
    for p in range(len(a)):
        h = ((codes * a[p] + b[p]) >> np.uint64(32)) & _MASK32  # multiply-shift hashing, wraps mod 2**64
        out[:, p] = np.minimum.reduceat(h, offsets)
    return out


def near_duplicates(sigs: np.ndarray, bands: int = 21, threshold: float = 0.7,
                    skip: Sequence[bool] | None = None) -> list[tuple[int, float] | None]:
    """For each row, (index of the first row of its near-duplicate group, similarity) or None.

    LSH: rows sharing all values of any band are candidates; a candidate pair is kept
    when the share of equal signature values (the Jaccard estimate) reaches `threshold`.
    Each bucket is checked against its first row and each row against its predecessor,
    so big buckets cost linear time.
    """
    n, num_perm = sigs.shape
    r = num_perm // bands
    active = np.ones(n, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    idx_active = np.nonzero(active)[0]
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    pairs_i, pairs_j = [], []
    for band in range(bands):
        cols = sigs[idx_active, band * r:(band + 1) * r].astype(np.uint64)
        h = np.zeros(len(idx_active), dtype=np.uint64)
        for c in range(r):
            h = (h ^ cols[:, c]) * np.uint64(0x100000001B3)
        order = np.lexsort((idx_active, h))
        hs, ids = h[order], idx_active[order]
        same = hs[1:] == hs[:-1]
        if not same.any():
            continue
        # group starts: the first index of each run of equal hashes
        run_start = np.concatenate([[True], ~same])
        first_of_run = np.maximum.accumulate(np.where(run_start, np.arange(len(hs)), 0))
        members = np.nonzero(~run_start)[0]
        pairs_i.append(ids[first_of_run[members]])
        pairs_j.append(ids[members])
        pairs_i.append(ids[members - 1])
        pairs_j.append(ids[members])
    best: dict[int, float] = {}
    if pairs_i:
        pi = np.concatenate(pairs_i)
        pj = np.concatenate(pairs_j)
        key = np.unique(np.minimum(pi, pj) * np.int64(n) + np.maximum(pi, pj))
        pi, pj = key // n, key % n
        sim = np.empty(len(pi), dtype=np.float32)
        for s in range(0, len(pi), 1_000_000):
            sim[s:s + 1_000_000] = (sigs[pi[s:s + 1_000_000]] == sigs[pj[s:s + 1_000_000]]).mean(axis=1)
        ok = sim >= threshold
        for i, j, sv in zip(pi[ok].tolist(), pj[ok].tolist(), sim[ok].tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
            best[j] = max(best.get(j, 0.0), sv)
            best[i] = max(best.get(i, 0.0), sv)
    out: list[tuple[int, float] | None] = [None] * n
    for i in range(n):
        root = find(i)
        if root != i:
            out[i] = (root, best.get(i, threshold))
    return out


def dedup_reasons(texts: Sequence[str], config: DedupConfig = DedupConfig(),
                  dropped: Sequence[bool] | None = None) -> list[str | None]:
    """A reason for every row that is a duplicate of an earlier one (None for rows to keep).

    Rows already `dropped` (by filters) neither get a reason here nor make others duplicates.
    """
    n = len(texts)
    dropped = list(dropped) if dropped is not None else [False] * n
    reasons: list[str | None] = [None] * n
    if config.exact:
        live = [i for i in range(n) if not dropped[i]]
        firsts = exact_duplicates([texts[i] for i in live])
        for pos, f in enumerate(firsts):
            if f is not None:
                reasons[live[pos]] = f"exact duplicate of row {live[f]}"
    if config.near:
        skip = [dropped[i] or reasons[i] is not None for i in range(n)]
        if n - sum(skip) > 1:
            sigs = minhash_signatures(texts, config.num_perm, config.shingle, config.seed, config.chunk_rows)
            for i, hit in enumerate(near_duplicates(sigs, config.bands, config.threshold, skip)):
                if hit is not None and not skip[i]:
                    reasons[i] = f"near duplicate of row {hit[0]} (similarity {hit[1]:.2f})"
    return reasons
