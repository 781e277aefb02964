"""Accuracy-per-parameter arithmetic and the validate/efficiency outputs."""
import csv
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, need_shared
from qzoo.evaluation import efficiency_rows, frontier, metric_at_params, params_at_metric


def test_frontier_keeps_only_improvements():
    pts = [(100, 80.0), (200, 79.0), (300, 85.0), (300, 86.0), (1000, 90.0)]
    assert frontier(pts) == [(100, 80.0), (300, 86.0), (1000, 90.0)]
    assert frontier([(10, 0.5), (20, 0.7), (40, 0.2)], higher=False) == [(10, 0.5), (40, 0.2)]


def test_interpolation_is_linear_in_log_params():
    curve = [(100, 80.0), (10_000, 90.0)]
    assert params_at_metric(curve, 85.0) == pytest.approx(1000.0)        # halfway in log10: 10^3
    assert metric_at_params(curve, 1000) == pytest.approx(85.0)
    assert params_at_metric(curve, 95.0) is None and params_at_metric(curve, 70.0) is None
    assert metric_at_params(curve, 50) is None and metric_at_params(curve, 20_000) is None
    assert metric_at_params(curve, 20_000, max_params=40_000) == 90.0   # larger models evaluated, none better
    assert params_at_metric([(10, 0.5), (1000, 0.1)], 0.3) == pytest.approx(100.0)  # lower-is-better curve


def _g(name, params, mean, quadratic=False, external=False):
    return dict(group=name, params=params, mean=mean, std=0.0, quadratic=quadratic, external=external)


def test_params_saved_and_gain():
    groups = [_g('c1', 100, 80.0), _g('c2', 10_000, 90.0), _g('ext', 500, 99.0, external=True),
              _g('q', 500, 85.0, quadratic=True), _g('qbig', 50_000, 95.0, quadratic=True)]
    rows = {r['group']: r for r in efficiency_rows(groups, 'top1')}
    q = rows['q']
    assert q['conv_params_at_equal_metric'] == pytest.approx(1000.0)      # external excluded from the curve
    assert q['params_saved'] == pytest.approx(0.5)
    assert q['metric_gain_at_equal_params'] == pytest.approx(85.0 - (80 + 10 * math.log(5) / math.log(100)))
    assert rows['qbig']['params_saved'] is None and 'better than every conventional model' in rows['qbig']['note']
    assert 'params_saved' not in rows['c1']


def test_validate_external_akamaster_through_url_and_hash_path(tmp_path):
    """The issue's acceptance figure: akamaster ResNet20 (from ../shared, through the real torch.hub
    cache + hash check) scores 81.03% top-1 on cifar10-jpeg75 test (full 10k images)."""
    src = need_shared('checkpoints', 'akamaster', 'resnet20-12fca82f.th')
    hub_dir = tmp_path / 'torch' / 'hub' / 'checkpoints'
    hub_dir.mkdir(parents=True)
    (hub_dir / src.name).write_bytes(src.read_bytes())
    out = tmp_path / 'val.csv'
    env = dict(__import__('os').environ, TORCH_HOME=str(tmp_path / 'torch'), QZOO_OFFLINE='1', PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / 'eval' / 'validate.py'), '--data', 'cifar10-jpeg75',
                          '--weights', 'akamaster/resnet20', '--results-file', str(out)],
                         env=env, capture_output=True, text=True, check=True, timeout=600)
    row = json.loads(res.stdout.splitlines()[-1])
    assert row['top1'] == pytest.approx(81.03, abs=0.005) and row['param_count'] == 269_722
    assert row['dataset'] == 'cifar10-jpeg75' and row['split'] == 'test'
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size',
                                 'crop_pct', 'interpolation']
    assert {'dataset', 'split', 'neuron', 'macs', 'weights', 'sha256'} <= set(rows[0])
    assert rows[0]['sha256'].startswith('12fca82f')
