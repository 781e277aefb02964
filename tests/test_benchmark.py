"""eval/benchmark.py: the CLI runs on CPU on tiny settings and writes the documented CSV
columns with positive numbers; the on-device CIFAR augmentation is the crop/flip it claims.
(Speed targets live in the benchmark's output, not in timed tests.)"""
import csv
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import qzoo
from qzoo.layers import QuadraticLayer

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location('qzoo_benchmark', ROOT / 'eval' / 'benchmark.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load()
TINY = ['--device', 'cpu', '--batch-size', '2', '--min-time', '0.01', '--repeats', '1', '--warmup', '1']


def _read(path):
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_model_mode_writes_timm_and_qzoo_columns(tmp_path):
    out = tmp_path / 'models.csv'
    bench.main(TINY + ['--models', 'resnet8', 'qresnet8', '--path', 'both', '--img-size', '16',
                       '--latency-calls', '2', '--results-file', str(out)])
    header, rows = _read(out)
    assert header == bench.MODEL_COLUMNS
    for col in ['model', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size',
                'infer_gmacs', 'param_count', 'train_samples_per_sec', 'train_step_time', 'train_batch_size',
                'train_img_size', 'device', 'torch', 'neuron', 'path', 'compiled', 'dtype', 'channels_last', 'date']:
        assert col in header
    assert [(r['model'], r['path'], r['neuron']) for r in rows] == [
        ('resnet8', '-', 'linear'), ('qresnet8', 'fused', 'fan'), ('qresnet8', 'reference', 'fan')]
    for r in rows:
        for col in ['infer_samples_per_sec', 'infer_step_time', 'train_samples_per_sec', 'train_step_time',
                    'infer_latency_ms', 'infer_gmacs', 'param_count']:
            assert float(r[col]) > 0, (col, r)
        assert r['device'] == 'cpu' and r['torch'] == torch.__version__ and r['dtype'] == 'float32'
        assert int(r['infer_batch_size']) == 2 and int(r['train_img_size']) == 16
        assert r['infer_peak_mem_mb'] == ''  # not measured on CPU
        model = qzoo.create_model(r['model'])
        assert int(r['params']) == qzoo.count_params(model)
        assert int(r['macs']) == qzoo.count_macs(model, (1, 3, 16, 16))


def test_layer_bench_rows(tmp_path):
    out = tmp_path / 'layers.csv'
    bench.main(TINY + ['--layer-bench', '--layers', 'stem', '64-64', '--rounds', '1', '--results-file', str(out)])
    header, rows = _read(out)
    assert header == bench.LAYER_COLUMNS
    assert [r['layer'] for r in rows] == ['stem', '64-64']
    assert rows[0]['input_grad'] == 'False' and rows[1]['input_grad'] == 'True'
    for r in rows:
        for col in ['conv_ms', 'fused_ms', 'reference_ms', 'stacked_ms', 'fused_x', 'reference_x', 'stacked_x']:
            assert float(r[col]) > 0


def test_cifar_train_mode(tmp_path):
    out = tmp_path / 'cifar.csv'
    bench.main(TINY + ['--cifar-train', '--models', 'qresnet8', '--path', 'both', '--cifar-size', '16',
                       '--amp', 'bf16', '--channels-last', '--results-file', str(out)])
    _, rows = _read(out)
    assert [(r['bench'], r['path']) for r in rows] == [('cifar-train', 'fused'), ('cifar-train', 'reference')]
    for r in rows:
        assert float(r['train_samples_per_sec']) > 0 and r['infer_samples_per_sec'] == ''
        assert r['dtype'] == 'bf16-amp' and r['channels_last'] == 'True'


def test_crop_flip_is_a_padded_crop_and_mirror():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    oy, ox = torch.tensor([0, 8, 3, 5]), torch.tensor([8, 0, 4, 1])
    flip = torch.tensor([False, True, False, True])
    got = bench.crop_flip(images, oy, ox, flip, pad=4)
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(4):
        want = padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        torch.testing.assert_close(got[i], want.flip(-1) if flip[i] else want)


def test_device_cifar_batch_is_normalised_float():
    data = bench.DeviceCifar(10, torch.device('cpu'), channels_last=True)
    x, y = data.batch(6)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == (6,) and int(y.min()) >= 0 and int(y.max()) < 10
    assert x.min() >= -2.1 and x.max() <= 2.2  # (0..255 - mean) / std on CIFAR statistics


@pytest.mark.parametrize('path', ['fused', 'reference'])
def test_build_sets_the_path(path):
    model = bench.build('qresnet8', {}, torch.device('cpu'), False, path)
    layers = [m for m in model.modules() if isinstance(m, QuadraticLayer)]
    assert layers and all(m.fused == (path == 'fused') for m in layers)
    assert bench.paths_for(model, 'both') == ['fused', 'reference']
    assert bench.paths_for(qzoo.create_model('resnet8'), 'both') == ['-']


def test_model_args_parse():
    assert bench.parse_model_args(['neuron=qres', 'width=12', 'widths=[8,16,32]']) == \
        {'neuron': 'qres', 'width': 12, 'widths': [8, 16, 32]}
    with pytest.raises(SystemExit):
        bench.parse_model_args(['width'])


def test_latency_bench_interleaved(tmp_path):
    out = tmp_path / 'latency.csv'
    bench.main(TINY[:2] + ['--latency-bench', '--models', 'resnet8', 'qresnet8', '--path', 'both', '--rounds', '2',
                           '--min-time', '0.01', '--warmup', '1', '--results-file', str(out)])
    _, rows = _read(out)
    assert [(r['model'], r['path'], r['bench']) for r in rows] == [
        ('resnet8', '-', 'latency'), ('qresnet8', 'fused', 'latency'), ('qresnet8', 'reference', 'latency')]
    assert float(rows[0]['infer_latency_ratio']) == 1.0
    for r in rows:
        assert int(r['infer_batch_size']) == 1 and float(r['infer_latency_ms']) > 0
        assert float(r['infer_latency_ratio']) > 0
