"""Bootstrap intervals for qzoo's reported numbers: resampling designs for test sets, seed
resampling, percentile intervals and the verdict a table prints.

A reported number (a group's mean test metric, a parameter saving read off a frontier) has two
sources of chance: which networks training produced (the seeds) and which examples the test set
happens to hold. One bootstrap replicate resamples both:

* **test examples**, once per dataset and replicate, with the *same* draw for every model scored
  on that test set (paired resampling: a difference between two models is measured on the same
  resampled examples, so test-set luck shared by both cancels). A :class:`Design` says how:
  independent examples are drawn with replacement (:meth:`Design.iid`), within each class when
  the class counts are fixed by construction (:meth:`Design.stratified`), and examples that
  overlap in time are drawn in blocks (:meth:`Design.blocks`, see its docstring for the CWRU
  windows);
* **seeds**, independently per group (different trainings share nothing): a group of k seeds
  takes k of its seeds with replacement and averages their metrics on the resampled examples.
  A group of one seed keeps it: its interval covers test-set sampling only.

A replicate is a row of drawn example indices (:func:`index_chunks`), or equivalently of counts
(:func:`count_chunks`: how often each example was drawn); a metric that is a mean over examples is
the mean of the per-example scores at the drawn indices, ratios (macro-F1) are formed from
per-class sums. The point estimate is the same computation on the test set itself, i.e. the plain
metric.

Intervals are percentile intervals (the 2.5% and 97.5% quantiles of the replicates, numpy's
'linear' rule). A derived number can be undefined in a replicate (a quadratic model's metric
outside the range of the conventional curve); :func:`judge` calls it **not established** when it
is undefined in more than :data:`MAX_UNDEFINED` of the replicates, or when its interval over the
defined replicates contains zero.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

__all__ = ['Design', 'LEVEL', 'MAX_UNDEFINED', 'REPLICATES', 'CHUNK', 'rng_for', 'index_chunks', 'count_chunks',
           'counts_of', 'seed_draws',
           'interval', 'Interval', 'judge', 'Verdict', 'mean_over_seeds']

LEVEL = 0.95            #: coverage of every interval
MAX_UNDEFINED = 0.10    #: a derived number undefined in more than this share of replicates is not established
REPLICATES = 2000       #: default number of bootstrap replicates
CHUNK = 250             #: replicates drawn per batch (fixed: the draws depend on it)


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A numpy PCG64 generator seeded by ``seed`` and the SHA-256 of ``keys`` (e.g. a dataset name,
    a group name), so each stream is fixed by its name and independent of which others exist."""
    words = [int(seed)]
    for k in keys:
        d = hashlib.sha256(str(k).encode()).digest()
        words += [int.from_bytes(d[i:i + 4], 'little') for i in range(0, 16, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


@dataclass(frozen=True)
class Design:
    """How a test set's examples are resampled: within each stratum, blocks of ``block``
    consecutive members (in ``members[s]`` order, wrapping around) are drawn with replacement
    until the stratum's size is reached. ``block=1`` is the ordinary (stratified) bootstrap."""
    n: int
    members: Tuple[np.ndarray, ...]   #: per stratum, the example indices in their natural order
    block: int
    description: str

    @classmethod
    def iid(cls, n: int) -> 'Design':
        """Examples drawn independently with replacement (n draws from n)."""
        return cls(int(n), (np.arange(int(n)),), 1, f'{int(n):,} examples resampled independently')

    @classmethod
    def stratified(cls, labels: Sequence[int], what: str = 'class') -> 'Design':
        """Independent draws within each ``labels`` value: every replicate keeps the per-class counts
        (use it where the test set's class balance is fixed by construction)."""
        labels = np.asarray(labels)
        strata = tuple(np.flatnonzero(labels == v) for v in np.unique(labels))
        return cls(len(labels), strata, 1,
                   f'{len(labels):,} examples resampled independently within each {what} ({len(strata)} strata)')

    @classmethod
    def blocks(cls, strata: Sequence[int], positions: Sequence[float], block: int, what: str = '') -> 'Design':
        """Circular block bootstrap within strata, for test examples cut from long recordings with
        overlap (CWRU windows).

        Windows of ``w`` samples taken every ``s`` samples share signal with their next
        ``ceil(w / s) - 1`` neighbours and with none further away, so they are not independent
        and an example-wise bootstrap understates the variance (by up to the overlap factor).
        Blocks of ``block = ceil(w / s)`` consecutive windows carry that dependence intact into
        the replicate; windows in different blocks share no samples. Each stratum (a recording
        segment: in CWRU one recording per class) is resampled on its own, so every replicate
        keeps the class counts and no block joins two recordings. Blocks wrap around the end of
        the segment (Politis & Romano's circular variant) so every window is equally likely to
        be drawn and the replicates are centred on the plain mean (the moving-block variant
        under-draws the segment's ends). With ``block=1`` (non-overlapping windows) this is the
        stratified bootstrap."""
        strata, positions = np.asarray(strata), np.asarray(positions)
        members = tuple(np.flatnonzero(strata == v)[np.argsort(positions[strata == v], kind='stable')]
                        for v in np.unique(strata))
        block = max(1, int(block))
        desc = (f'{len(strata):,} examples in {len(members)} segments; ' +
                (f'circular blocks of {block} consecutive examples within each segment' if block > 1 else
                 'resampled independently within each segment') + (f' ({what})' if what else ''))
        return cls(len(strata), members, block, desc)

    def indices(self, rng: np.random.Generator, reps: int) -> np.ndarray:
        """(reps, n) drawn example indices, strata in order."""
        out = []
        for m in self.members:
            size = len(m)
            if size == 0:
                continue
            b = min(self.block, size)
            k = math.ceil(size / b)
            starts = rng.integers(0, size, (reps, k))
            pos = (starts[:, :, None] + np.arange(b)) % size
            out.append(m[pos.reshape(reps, k * b)[:, :size]])
        return np.concatenate(out, axis=1) if out else np.zeros((reps, 0), np.int64)

    def counts(self, rng: np.random.Generator, reps: int) -> np.ndarray:
        """(reps, n) float64: how many times each example is drawn in each replicate."""
        return counts_of(self.indices(rng, reps), self.n)


def index_chunks(design: Design, replicates: int, seed: int, key: str) -> Iterator[np.ndarray]:
    """The drawn example indices (replicates x n) of ``replicates`` replicates, :data:`CHUNK` at a
    time, from the stream :func:`rng_for` ``(seed, 'examples', key)``: the same (seed, key) gives
    the same draws."""
    rng = rng_for(seed, 'examples', key)
    done = 0
    while done < replicates:
        r = min(CHUNK, replicates - done)
        yield design.indices(rng, r)
        done += r


def counts_of(idx: np.ndarray, n: int) -> np.ndarray:
    """(reps, n) float64 counts of drawn indices ``idx`` (reps, draws)."""
    reps = len(idx)
    flat = (idx + (np.arange(reps) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=reps * n).reshape(reps, n).astype(np.float64)


def count_chunks(design: Design, replicates: int, seed: int, key: str) -> Iterator[np.ndarray]:
    """:func:`index_chunks` as count matrices (replicates x examples)."""
    for idx in index_chunks(design, replicates, seed, key):
        yield counts_of(idx, design.n)


def seed_draws(k: int, replicates: int, seed: int, key: str) -> np.ndarray:
    """(replicates, k) seed indices drawn with replacement for a group of ``k`` seeds
    (stream (seed, 'seeds', key)); a single seed is always kept."""
    if k == 1:
        return np.zeros((replicates, 1), np.int64)
    return rng_for(seed, 'seeds', key).integers(0, k, (replicates, k))


@dataclass(frozen=True)
class Interval:
    """A point estimate, its percentile interval over the defined replicates, and the share of
    replicates where the number was defined."""
    point: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    defined: float

    def contains_zero(self) -> bool:
        return self.lo is not None and self.lo <= 0.0 <= self.hi


def interval(point: Optional[float], replicates: Sequence[float], level: float = LEVEL) -> Interval:
    """Percentile interval of the finite ``replicates`` (NaN marks 'undefined in that replicate')."""
    v = np.asarray(replicates, dtype=np.float64)
    ok = np.isfinite(v)
    share = float(ok.mean()) if len(v) else 0.0
    if not ok.any():
        return Interval(point, None, None, share)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(v[ok], [a, 1.0 - a])
    return Interval(point, float(lo), float(hi), share)


@dataclass(frozen=True)
class Verdict:
    """``established``: True when the sign of the number is settled; ``sign``: +1 / -1 / 0;
    ``text``: the words the tables print."""
    established: bool
    sign: int
    text: str


def judge(iv: Interval, max_undefined: float = MAX_UNDEFINED, why_undefined: str = '') -> Verdict:
    """**not established** when ``iv`` is undefined in more than ``max_undefined`` of the
    replicates (or at the point estimate) or its interval contains zero; else established, with
    the sign of the interval."""
    if iv.point is None or iv.lo is None or 1.0 - iv.defined > max_undefined:
        why = why_undefined or 'undefined'
        return Verdict(False, 0, f'not established ({why} in {100 * (1 - iv.defined):.0f}% of resamples)')
    if iv.contains_zero():
        return Verdict(False, 0, 'not established (the interval contains 0)')
    return Verdict(True, 1 if iv.lo > 0 else -1, 'established')


def mean_over_seeds(per_seed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(replicates,) group means: ``per_seed`` (replicates, k) metrics of each seed on each
    replicate's examples, averaged over each replicate's drawn seeds ``draws`` (replicates, k)."""
    return np.take_along_axis(per_seed, draws, axis=1).mean(axis=1)
