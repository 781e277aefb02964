"""qzoo.stats: resampling designs, paired draws, intervals and verdicts (exact checks, small inputs)."""
import numpy as np
import pytest

from qzoo import stats
from qzoo.stats import Design, Interval, count_chunks, interval, judge, seed_draws


def _boot_means(design, scores, reps=2000, seed=0, key='k'):
    return np.concatenate([w @ scores / w.sum(1) for w in count_chunks(design, reps, seed, key)])


def test_counts_keep_the_size_and_each_stratum():
    labels = np.array([0] * 30 + [1] * 50 + [2] * 7)
    d = Design.stratified(labels)
    w = d.counts(np.random.default_rng(0), 100)
    assert w.shape == (100, len(labels)) and (w.sum(1) == len(labels)).all()
    for c in (0, 1, 2):
        assert (w[:, labels == c].sum(1) == (labels == c).sum()).all()   # class counts fixed by design
    assert Design.iid(10).counts(np.random.default_rng(0), 5).sum() == 50


def test_blocks_are_runs_of_consecutive_members_that_wrap_within_a_segment():
    strata = np.array([0] * 20 + [1] * 12)
    positions = np.concatenate([np.arange(20)[::-1], np.arange(12)])    # order comes from positions, not indices
    d = Design.blocks(strata, positions, 4)
    idx = d.indices(np.random.default_rng(1), 50)
    seg0 = np.arange(20)[::-1]                                           # members of stratum 0 in position order
    pos_of = {int(m): i for i, m in enumerate(seg0)}
    for row in idx:
        first = [pos_of[int(i)] for i in row[:20]]
        assert set(row[:20]) <= set(range(20)) and set(row[20:]) <= set(range(20, 32))   # no block crosses segments
        for b in range(0, 20, 4):
            assert [(first[b] + k) % 20 for k in range(4)] == first[b:b + 4]              # consecutive, circular


def test_point_estimate_is_the_plain_mean_and_circular_blocks_are_centred():
    rng = np.random.default_rng(0)
    scores = (rng.random(64) < 0.7).astype(float)
    d = Design.blocks(np.zeros(64, int), np.arange(64), 8)
    w = np.ones((1, 64))
    assert (w @ scores / 64)[0] == scores.mean()
    mean_counts = np.concatenate(list(count_chunks(d, 4000, 0, 'centre'))).mean(0)
    assert np.abs(mean_counts - 1).max() < 0.1     # ends drawn as often as the middle (no edge effect)


def test_block_bootstrap_widens_intervals_for_autocorrelated_scores():
    rng = np.random.default_rng(0)
    runs = np.repeat((rng.random(40) < 0.5).astype(float), 8)             # 320 windows, 8 overlapping share a score
    flat = np.zeros(320, int)
    iid = _boot_means(Design.blocks(flat, np.arange(320), 1), runs).std()
    block = _boot_means(Design.blocks(flat, np.arange(320), 8), runs).std()
    assert block > 2.2 * iid                                              # ~sqrt(8) = 2.8 times wider
    shuffled = rng.permutation(runs)                                      # no dependence: blocks change little
    ratio = _boot_means(Design.blocks(flat, np.arange(320), 8), shuffled).std() / \
        _boot_means(Design.blocks(flat, np.arange(320), 1), shuffled).std()
    assert 0.75 < ratio < 1.3


def test_intervals_shrink_with_more_data():
    rng = np.random.default_rng(0)
    small = (rng.random(250) < 0.8).astype(float)
    big = np.tile(small, 4)
    w_small = np.diff(np.quantile(_boot_means(Design.iid(250), small), [0.025, 0.975]))[0]
    w_big = np.diff(np.quantile(_boot_means(Design.iid(1000), big), [0.025, 0.975]))[0]
    assert 0.4 < w_big / w_small < 0.6                                    # 1/sqrt(4)


def test_paired_resampling_gives_zero_width_for_identical_models():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.6).astype(float)
    b = a.copy()
    c = (rng.random(300) < 0.6).astype(float)
    diffs_same, diffs_other = [], []
    for w in count_chunks(Design.iid(300), 500, 0, 'paired'):
        diffs_same.append(w @ a - w @ b)
        diffs_other.append(w @ a - w @ c)
    assert np.all(np.concatenate(diffs_same) == 0)
    iv = interval(0.0, np.concatenate(diffs_same))
    assert iv.lo == iv.hi == 0.0 and not judge(iv).established
    assert np.concatenate(diffs_other).std() > 0


def test_draws_are_fixed_by_seed_and_key_and_independent_across_keys():
    d = Design.iid(50)
    one = np.concatenate(list(count_chunks(d, 600, 3, 'cwru')))
    assert np.array_equal(one, np.concatenate(list(count_chunks(d, 600, 3, 'cwru'))))
    assert not np.array_equal(one, np.concatenate(list(count_chunks(d, 600, 3, 'dsb'))))
    assert not np.array_equal(one, np.concatenate(list(count_chunks(d, 600, 4, 'cwru'))))
    assert one.shape == (600, 50)                                         # chunks of CHUNK add up exactly
    assert (seed_draws(1, 7, 0, 'g') == 0).all()
    s = seed_draws(3, 1000, 0, 'g')
    assert s.shape == (1000, 3) and set(np.unique(s)) == {0, 1, 2}
    assert np.array_equal(s, seed_draws(3, 1000, 0, 'g'))


def test_mean_over_seeds_uses_the_drawn_seeds():
    per_seed = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    draws = np.array([[0, 0, 2], [1, 1, 1]])
    assert stats.mean_over_seeds(per_seed, draws).tolist() == [pytest.approx(5 / 3), 20.0]


def test_interval_and_verdicts():
    v = np.linspace(-1, 3, 401)
    iv = interval(1.0, v)
    assert iv.lo == pytest.approx(np.quantile(v, 0.025)) and iv.hi == pytest.approx(np.quantile(v, 0.975))
    assert iv.defined == 1.0
    crossing = judge(iv)
    assert not crossing.established and crossing.text == 'not established (the interval contains 0)'
    pos = judge(interval(2.0, np.linspace(0.5, 3, 100)))
    neg = judge(interval(-2.0, np.linspace(-3, -0.5, 100)))
    assert (pos.established, pos.sign, neg.established, neg.sign) == (True, 1, True, -1)
    some_nan = np.r_[np.linspace(0.5, 3, 85), [np.nan] * 15]              # undefined in 15% > 10%
    u = judge(interval(1.0, some_nan), why_undefined='above every conventional model')
    assert not u.established and u.text == 'not established (above every conventional model in 15% of resamples)'
    ok = judge(interval(1.0, np.r_[np.linspace(0.5, 3, 95), [np.nan] * 5]))   # 5% undefined: allowed
    assert ok.established
    assert not judge(Interval(None, None, None, 0.0)).established
