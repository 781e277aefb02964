"""The training engine: outputs, exact resume, NaN guard, DDP (gloo, 2 processes)."""
import json
import socket

import pytest
import timm
import torch
import yaml

import procs
from conftest import ROOT
from inject import Stop, nan_at_step, stop_after_epoch
from qzoo.engine import RecipeError, TrainingDiverged, load_recipe, train
from qzoo.hub import load_weights

SYN = dict(model='qmlp', model_args={'hidden': [16]}, data='synthetic',
           data_args={'kind': 'circles', 'n_train': 256, 'n_val': 64, 'n_test': 64},
           epochs=2, batch_size=32, optimizer='sgd', lr=0.05, weight_decay=1e-4, quad_lr_scale=0.1,
           warmup_epochs=0.5, eval_batch_size=64)


def _cfg(**kw):
    return load_recipe(None, **{**SYN, **kw})


def _weights(folder):
    return load_weights(folder / 'model.safetensors')[0]


def test_run_writes_publishable_folder(tmp_path):
    res = train(_cfg(), tmp_path, progress=False)
    for f in ('model.safetensors', 'config.json', 'README.md', 'results.json', 'recipe.yaml', 'log.jsonl'):
        assert (tmp_path / f).is_file(), f
    r = json.loads((tmp_path / 'results.json').read_text())
    assert list(r) == ['model', 'model_args', 'dataset', 'task', 'data_spec', 'neuron', 'params', 'macs', 'macs_input',
                       'val', 'test', 'primary_metric', 'epochs', 'selected_epoch', 'selection', 'divergence', 'seed',
                       'wall_time_s', 'device', 'world_size', 'torch', 'timm', 'qzoo', 'code', 'amp', 'channels_last',
                       'compile', 'recipe', 'recipe_sha256', 'data', 'smoke']
    assert r['divergence'] is None and r['amp'] == 'off' and r['channels_last'] is False and r['compile'] == 'off'
    assert len(r['code']['source_sha256']) == 64 and r['timm'] == timm.__version__
    assert r['dataset'].startswith('synthetic-circles') and r['params'] == res['params'] > 0 and r['macs'] > 0
    assert set(r['val']) == set(r['test']) == {'top1', 'macro_f1'}  # 2 classes: no top5
    assert r['selection'].startswith('best validation') and 0 <= r['selected_epoch'] < 2
    assert r['recipe_sha256'] == _cfg().sha256()
    log = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in log] == [0, 1] and all({'train_loss', 'val_top1', 'lr', 'img_s'} <= set(l) for l in log)
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['architecture'] == 'qmlp' and cfg['qzoo']['results']['test'] == r['test']
    assert (tmp_path / 'recipe.yaml').read_text() == _cfg().to_yaml()
    assert yaml.safe_load((tmp_path / 'recipe.yaml').read_text())['model'] == 'qmlp'
    # the published weights are the best-on-validation epoch's
    best = max(log, key=lambda l: l['val_top1'])
    assert r['selected_epoch'] == best['epoch'] and r['val']['top1'] == pytest.approx(best['val_top1'])
    assert not list(tmp_path.glob('*.tmp')) and not list(tmp_path.glob('.*.tmp'))


def test_resume_is_exact(tmp_path, monkeypatch):
    cfg = _cfg(model_args={'hidden': [16], 'drop_rate': 0.2}, select='last')
    train(cfg, tmp_path / 'straight', progress=False)
    out = tmp_path / 'resumed'
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)
        with pytest.raises(Stop):
            train(cfg, out, progress=False)
    assert not (out / 'model.safetensors').exists()
    train(cfg, out, resume=True, progress=False)
    a, b = _weights(tmp_path / 'straight'), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(l)['epoch'] for l in (out / 'log.jsonl').read_text().splitlines()] == [0, 1]


def test_resume_with_best_val_selects_the_same_epoch(tmp_path, monkeypatch):
    cfg = _cfg(epochs=3)
    straight = train(cfg, tmp_path / 'straight', progress=False)
    out = tmp_path / 'resumed'
    with monkeypatch.context() as m:
        stop_after_epoch(m, 1)
        with pytest.raises(Stop):
            train(cfg, out, progress=False)
    resumed = train(cfg, out, resume=True, progress=False)
    assert resumed['selected_epoch'] == straight['selected_epoch'] and resumed['test'] == straight['test']
    a, b = _weights(tmp_path / 'straight'), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_weights_are_repaired_from_the_checkpoint_or_refused(tmp_path, monkeypatch):
    from qzoo.errors import CheckpointError
    from qzoo.hub import save_weights
    cfg = _cfg(epochs=3)
    straight = train(cfg, tmp_path / 'straight', progress=False)
    out = tmp_path / 'resumed'
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)  # stopped after epoch 0's checkpoint, before its best weights were written
        with pytest.raises(Stop):
            train(cfg, out, progress=False)
    assert not (out / 'best.safetensors').exists()
    resumed = train(cfg, out, resume=True, progress=False)  # epoch 0 was the best so far: rewritten from last.ckpt
    assert (resumed['selected_epoch'], resumed['test']) == (straight['selected_epoch'], straight['test'])
    # best weights of another epoch than the checkpoint's best, which the checkpoint cannot restore: refused
    state = torch.load(out / 'last.ckpt', weights_only=True)
    torch.save(dict(state, epoch=1, best_epoch=0), out / 'last.ckpt')
    save_weights(state['model'], out / 'best.safetensors', metadata={'format': 'pt', 'epoch': '1'})
    with pytest.raises(CheckpointError, match='holds epoch 1, but the checkpoint .* best validation epoch is 0'):
        train(cfg, out, resume=True, progress=False)


def test_resume_refuses_a_different_recipe(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)
        with pytest.raises(Stop):
            train(_cfg(), tmp_path, progress=False)
    with pytest.raises(RecipeError, match='different recipe'):
        train(_cfg(lr=0.5), tmp_path, resume=True, progress=False)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    steps = 256 // 32
    nan_at_step(monkeypatch, steps + 2)
    with pytest.raises(TrainingDiverged, match='non-finite training loss in epoch 1') as e:
        train(_cfg(epochs=3, nan_check_every=1), tmp_path, progress=False)
    assert 'last good checkpoint' in str(e.value)
    state = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    assert state['epoch'] == 0 and all(torch.isfinite(v).all() for v in state['model'].values())
    assert not (tmp_path / 'model.safetensors').exists()


def test_train_takes_a_mapping_and_refuses_other_types(tmp_path):
    with pytest.raises(RecipeError, match='epochs must be'):
        train(dict(SYN, epochs=0), tmp_path, progress=False)
    with pytest.raises(TypeError, match='needs a Recipe'):
        train('recipes/synthetic/circles-d2.yaml', tmp_path, progress=False)


def test_compile_auto_trains_eagerly_on_the_cpu_bit_for_bit(tmp_path):
    """compile: auto compiles on CUDA only: on the CPU a run is the uncompiled run, weight for weight."""
    train(_cfg(select='last'), tmp_path / 'off', progress=False)
    train(_cfg(select='last', compile='auto'), tmp_path / 'auto', progress=False)
    a, b = _weights(tmp_path / 'off'), _weights(tmp_path / 'auto')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / 'auto' / 'results.json').read_text())['compile'] == 'off'


@pytest.mark.slow
def test_compiled_training_step_runs_on_the_cpu_with_inductor(tmp_path):
    """The compiled path of the engine, with inductor (C++ code on the CPU) and a CUDA-graph mode (which marks each
    step's start; inductor runs CPU graphs without CUDA graphs): one graph, no graph break, the eager run's weights
    up to float rounding."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    cfg = dict(epochs=1, select='last', data_args=dict(SYN['data_args'], n_train=128))
    train(_cfg(**cfg), tmp_path / 'eager', progress=False)
    try:
        train(_cfg(compile='reduce-overhead', **cfg), tmp_path / 'compiled', progress=False)
        assert counters['stats']['unique_graphs'] == 1 and not counters['graph_break']
    finally:
        torch._dynamo.reset()
    assert json.loads((tmp_path / 'compiled' / 'results.json').read_text())['compile'] == 'reduce-overhead'
    a, b = _weights(tmp_path / 'eager'), _weights(tmp_path / 'compiled')
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_resume_keeps_this_devices_optimizer_implementation(tmp_path, monkeypatch):
    """A checkpoint saved by a CUDA run (fused optimizer) resumes on the CPU with the CPU's default implementation:
    torch's load_state_dict would otherwise take the saved group's fused flag."""
    from qzoo import engine
    cfg = _cfg()
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)
        with pytest.raises(Stop):
            train(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    for g in state['optimizer']['param_groups']:
        g['fused'] = True
    torch.save(state, tmp_path / 'last.ckpt')
    s = engine._build(cfg, engine.Dist(), torch.device('cpu'), smoke=False)
    with engine.RunDir(tmp_path) as run:
        assert engine._restore(s, run, cfg.sha256()).start_epoch == 1
    assert [g['fused'] for g in s.opt.param_groups] == [None] * len(s.opt.param_groups)
    assert s.opt.state_dict()['state']  # the momentum buffers were loaded


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_training_step_never_waits_for_the_device_and_uses_the_fused_optimizer():
    """On CUDA a step (forward, backward, clip, optimiser, schedule) makes no synchronising call, so steps queue
    and CUDA graphs replay back to back; SGD and AdamW run torch's fused kernels."""
    from qzoo import engine
    for optimizer in ('sgd', 'adamw'):
        s = engine._build(_cfg(optimizer=optimizer, grad_clip=1.0), engine.Dist(), torch.device('cuda'), smoke=False)
        assert all(g['fused'] for g in s.opt.param_groups) and s.amp_dtype == torch.bfloat16
        batches = list(s.train_loader)[:3]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            for x, y in batches:
                engine._forward_backward(s, x, y)
                engine._update(s)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gloo_two_processes_equals_single_process(tmp_path):
    """Two ranks of 16 samples each see exactly the single process's batches of 32, so DDP's
    averaged gradients give the same weights (no BatchNorm in an MLP)."""
    cfg = _cfg(select='last')
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(yaml.safe_dump(dict(SYN, select='last')))
    train(cfg, tmp_path / 'single', progress=False)
    cmd = [procs.PYTHON, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={_free_port()}',
           str(ROOT / 'recipes' / 'train.py'), '--config', str(recipe), '--out', str(tmp_path / 'ddp'),
           '--no-progress']
    res = procs.run(cmd, env=procs.child_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / 'ddp' / 'results.json').read_text())
    assert r['world_size'] == 2
    a, b = _weights(tmp_path / 'single'), _weights(tmp_path / 'ddp')
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
