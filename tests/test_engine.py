"""The training engine: outputs, exact resume, NaN guard, DDP (gloo, 2 processes)."""
import json
import re
import socket
import sys

import pytest
import timm
import torch
import yaml

import procs
from conftest import ROOT
from inject import Stop, nan_at_step, stop_after_epoch
from qzoo.engine import RecipeError, RunDirError, TrainingDiverged, load_recipe, main, train
from qzoo.hub import load_weights

sys.path.insert(0, str(ROOT / 'recipes'))

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


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != 'train.lock'}


def test_a_folder_holding_a_run_is_refused_and_force_replaces_it(tmp_path, monkeypatch):
    out = tmp_path / 'run'
    train(_cfg(), out, progress=False)
    before = _files(out)
    with pytest.raises(RunDirError, match=f'{out} holds a finished run \\(qmlp on synthetic-circles.*--resume.*'
                                          '--force'):
        train(_cfg(lr=0.5), out, progress=False)
    assert _files(out) == before
    part = tmp_path / 'part'  # an unfinished run is a run too
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)
        with pytest.raises(Stop):
            train(_cfg(), part, progress=False)
    with pytest.raises(RunDirError, match=f'{part} holds a run \\(last.ckpt'):
        train(_cfg(lr=0.5), part, progress=False)
    new = _cfg(lr=0.5, epochs=1)
    res = train(new, out, progress=False, force=True)  # replaced whole: nothing of the first run is left
    assert json.loads((out / 'results.json').read_text()) == json.loads(json.dumps(res))
    assert res['recipe_sha256'] == new.sha256() and (out / 'recipe.yaml').read_text() == new.to_yaml()
    assert [json.loads(l)['epoch'] for l in (out / 'log.jsonl').read_text().splitlines()] == [0]
    now = _files(out)
    assert set(now) == set(before) and all(now[k] != before[k] for k in now if k not in ('config.json', 'README.md'))


def test_a_failed_second_run_leaves_no_mix_and_no_epoch_minus_one(tmp_path, monkeypatch):
    """A second run that failed in its first step used to leave the first run's weights and results.json beside its
    own recipe.yaml and an empty log (publishable), and its error said 'end of epoch -1'."""
    out = tmp_path / 'run'
    train(_cfg(), out, progress=False)
    nan_at_step(monkeypatch, 0)
    second = _cfg(lr=0.5, nan_check_every=1)
    with pytest.raises(TrainingDiverged, match='non-finite training loss in epoch 0') as e:
        train(second, out, progress=False, force=True)
    msg = str(e.value)
    assert 'epoch -1' not in msg and 'no epoch had finished, so no checkpoint was written' in msg, msg
    assert msg.endswith('then train again') and '--resume' not in msg
    assert sorted(_files(out)) == ['log.jsonl', 'recipe.yaml'] and (out / 'recipe.yaml').read_text() == second.to_yaml()


def test_a_symlinked_train_lock_is_refused_and_its_target_kept(tmp_path):
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious\n')
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'train.lock').symlink_to(victim)
    with pytest.raises(RunDirError, match=f'cannot lock the run folder {out}: {out / "train.lock"} is a symbolic link'):
        train(_cfg(), out, progress=False)
    assert victim.read_text() == 'precious\n' and sorted(p.name for p in out.iterdir()) == ['train.lock']


def test_default_folders_tell_overrides_apart_and_a_finished_run_is_kept(tmp_path, monkeypatch, capsys):
    from qzoo.engine import default_out
    recipe = tmp_path / 'tiny.yaml'
    recipe.write_text(yaml.safe_dump(dict(SYN, epochs=1, name='tiny')))
    r = load_recipe(recipe)
    assert default_out(r) == 'runs/tiny-s0' and default_out(r, ['seed=0']) == 'runs/tiny-s0'
    assert default_out(r, ['model_args.hidden=[2]', 'lr=0.1'], smoke=True) == 'runs/tiny-s0-hidden2-lr0.1-smoke'
    long = default_out(r, [f'model_args.hidden=[{", ".join(["64"] * 20)}]'])
    other = default_out(r, [f'model_args.hidden=[{", ".join(["64"] * 21)}]'])
    assert long != other and len(long) <= len('runs/tiny-s0-') + 48 and re.search('-[0-9a-f]{8}$', long)
    monkeypatch.chdir(tmp_path)
    cli = ['--config', str(recipe), '--no-progress']
    assert main(cli) == 0 and main(cli + ['model_args.hidden=[2]']) == 0
    wide, narrow = tmp_path / 'runs' / 'tiny-s0', tmp_path / 'runs' / 'tiny-s0-hidden2'
    assert json.loads((narrow / 'results.json').read_text())['model_args'] == {'hidden': [2]}
    kept = _files(wide)
    assert json.loads(kept['results.json'])['model_args'] == {'hidden': [16]}
    capsys.readouterr()
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert f'error: the run folder runs/tiny-s0 holds a finished run' in err and '--force' in err
    assert _files(wide) == kept
    assert main(cli + ['--force']) == 0


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


# ---- refused before training: empty splits, oversized models, environments and devices --------------------
@pytest.mark.parametrize('split', ['val', 'test'])
def test_an_empty_split_is_refused_before_training(tmp_path, split):
    """n_val=0 trained and reported 0.0 (best_val picked epoch 0, publishing then ended in StopIteration)."""
    from qzoo.errors import DataError
    args = dict(SYN['data_args'], **{f'n_{split}': 0})
    with pytest.raises(DataError, match=rf'synthetic-circles-d2: the {split} split holds no samples .*; a run trains '
                                        rf'on train, selects its published epoch on val and scores it once on test\. '
                                        rf'Fix: set data_args.n_{split} to 1 or more'):
        train(_cfg(data_args=args), tmp_path, progress=False)
    assert not (tmp_path / 'results.json').exists() and not (tmp_path / 'log.jsonl').exists()


def test_a_model_too_large_to_build_is_refused_before_anything_is_allocated(tmp_path):
    """hidden=[10**12] from a recipe asked torch for 16 TB; its size is counted on the meta device first."""
    with pytest.raises(ValueError, match=r'qmlp with .*would hold [\d,]+ parameters and buffers \([\d,.]+ GB as '
                                         r'float32\), more than qzoo builds \(1,000,000,000\); nothing was allocated'):
        train(_cfg(model_args={'hidden': [10 ** 12]}), tmp_path, progress=False)


def test_distributed_environment_without_rank_is_named(tmp_path, monkeypatch, capsys):
    import train as train_cli
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.delenv('RANK', raising=False)
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(yaml.safe_dump(SYN))
    rc = train_cli.main(['--config', str(recipe), '--out', str(tmp_path / 'run'), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: WORLD_SIZE=2 asks for a distributed run, but RANK is not set') \
        and 'torchrun' in err and 'Traceback' not in err, err
    monkeypatch.setenv('RANK', '5')
    rc = train_cli.main(['--config', str(recipe), '--out', str(tmp_path / 'run'), '--no-progress'])
    assert rc == 2 and 'RANK must be a whole number in [0, 1], got ' in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_a_cuda_recipe_without_a_gpu_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe key device: device 'cuda', but this machine has no usable CUDA GPU"):
        train(_cfg(device='cuda'), tmp_path, progress=False)
    assert not (tmp_path / 'log.jsonl').exists()


@pytest.mark.parametrize('tamper, problem', [
    (dict(best=float('nan')), "best validation score nan, not a number"),
    (dict(best_epoch=7), 'best_epoch 7, not an epoch in [0, 0]'),
    (dict(best=None), 'best None and best_epoch 0: both or neither are set'),
    (dict(wall_time_s=float('inf')), 'wall_time_s inf, not a finite number of seconds >= 0'),
])
def test_a_checkpoint_with_impossible_progress_is_refused_on_resume(tmp_path, monkeypatch, tamper, problem):
    """A last.ckpt with best=NaN resumed and finished; its progress values are checked like its structure."""
    from qzoo.errors import CheckpointError
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)
        with pytest.raises(Stop):
            train(_cfg(), tmp_path, progress=False)
    ckpt = tmp_path / 'last.ckpt'
    torch.save(dict(torch.load(ckpt, weights_only=True), **tamper), ckpt)
    with pytest.raises(CheckpointError, match=re.escape(f'{ckpt} holds an invalid state ({problem})')):
        train(_cfg(), tmp_path, resume=True, progress=False)
    assert not (tmp_path / 'results.json').exists()


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('finished')
    train(_cfg(epochs=1), out, progress=False)
    return out


@pytest.mark.parametrize('content, problem', [
    ('[1, 2]', 'holds a JSON list, not the object of fields train writes'),
    ('{"model": "qmlp"', 'is not JSON'),
    (None, 'seed is missing'),
    ('drop data_spec', 'data_spec is missing'),
    ('drop primary', 'test has no finite top1 (the primary metric): None'),
    ('NaN test', 'test has no finite top1 (the primary metric): nan'),
    ('seed text', "seed is a str, not a int"),
])
def test_read_results_checks_what_publishing_reads(tmp_path, finished_run, content, problem):
    from qzoo.engine import read_results
    from qzoo.errors import RunDirError
    path = tmp_path / 'results.json'
    path.write_text((finished_run / 'results.json').read_text())
    good = json.loads(path.read_text())
    assert read_results(path) == good
    changed = dict(good)
    if content is None:
        del changed['seed']
    elif content == 'drop data_spec':
        del changed['data_spec']
    elif content == 'drop primary':
        changed['test'] = {k: v for k, v in good['test'].items() if k != 'top1'}
    elif content == 'NaN test':
        changed['test'] = dict(good['test'], top1=float('nan'))
    elif content == 'seed text':
        changed['seed'] = 'zero'
    path.write_text(content if content and content[0] in '[{' else json.dumps(changed))
    with pytest.raises(RunDirError, match=re.escape(problem)) as e:
        read_results(path)
    assert str(path) in str(e.value) and 'Fix:' in str(e.value)
