"""The training engine: outputs, exact resume, NaN guard, DDP (gloo, 2 processes), recipes."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
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
    assert r['dataset'].startswith('synthetic-circles') and r['params'] == res['params'] > 0 and r['macs'] > 0
    assert set(r['val']) == set(r['test']) == {'top1', 'macro_f1'}  # 2 classes: no top5
    assert r['selection'].startswith('best validation') and 0 <= r['selected_epoch'] < 2
    log = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in log] == [0, 1] and all({'train_loss', 'val_top1', 'lr', 'img_s'} <= set(l) for l in log)
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['architecture'] == 'qmlp' and cfg['qzoo']['results']['test'] == r['test']
    assert yaml.safe_load((tmp_path / 'recipe.yaml').read_text())['model'] == 'qmlp'
    # the published weights are the best-on-validation epoch's
    best = max(log, key=lambda l: l['val_top1'])
    assert r['selected_epoch'] == best['epoch'] and r['val']['top1'] == pytest.approx(best['val_top1'])


def test_resume_is_exact(tmp_path):
    cfg = _cfg(model_args={'hidden': [16], 'drop_rate': 0.2}, select='last')
    train(cfg, tmp_path / 'straight', progress=False)
    out = tmp_path / 'resumed'
    assert train(dict(cfg, fault={'stop_after_epoch': 0}), out, progress=False) == {'interrupted_after_epoch': 0}
    assert not (out / 'model.safetensors').exists()
    train(cfg, out, resume=True, progress=False)
    a, b = _weights(tmp_path / 'straight'), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((out / 'log.jsonl').read_text().splitlines()) == 2


def test_resume_refuses_a_different_recipe(tmp_path):
    train(dict(_cfg(), fault={'stop_after_epoch': 0}), tmp_path, progress=False)
    with pytest.raises(RecipeError, match='different recipe'):
        train(_cfg(lr=0.5), tmp_path, resume=True, progress=False)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    steps = 256 // 32
    with pytest.raises(TrainingDiverged, match='non-finite training loss in epoch 1') as e:
        train(_cfg(epochs=3, fault={'nan_at_step': steps + 2}, nan_check_every=1), tmp_path, progress=False)
    assert 'last good checkpoint' in str(e.value)
    state = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    assert state['epoch'] == 0 and all(torch.isfinite(v).all() for v in state['model'].values())
    assert not (tmp_path / 'model.safetensors').exists()


def test_recipe_errors():
    with pytest.raises(RecipeError, match='unknown recipe key'):
        load_recipe(None, **SYN, epohcs=3)
    with pytest.raises(RecipeError, match='key=value'):
        load_recipe(None, ['epochs'], **SYN)
    with pytest.raises(RecipeError, match='not found'):
        load_recipe('recipes/nope.yaml')
    cfg = load_recipe(None, ['model_args.hidden=[4, 4]', 'lr=0.3'], **SYN)
    assert cfg['model_args']['hidden'] == [4, 4] and cfg['lr'] == 0.3


def test_recipe_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 as a string: a launch.py --grid quad_lr_scale=1e-4,... once crashed in the optimizer
    cfg = load_recipe(None, ['quad_lr_scale=1e-4', 'epochs=3.0', 'grad_clip=null'], **SYN)
    assert cfg['quad_lr_scale'] == 1e-4 and isinstance(cfg['quad_lr_scale'], float)
    assert cfg['epochs'] == 3 and isinstance(cfg['epochs'], int) and cfg['grad_clip'] is None
    f = tmp_path / 'r.yaml'
    f.write_text('model: qmlp\ndata: synthetic\nlr: 1e-2\nweight_decay: 5E-4\n')
    assert load_recipe(f)['lr'] == 0.01 and load_recipe(f)['weight_decay'] == 5e-4
    for bad, match in (['lr=fast'], 'lr must be a number'), (['epochs=2.5'], 'whole number'), \
                      (['seed=true'], 'seed must be a number'), (['lr=nan'], 'lr must be a number'):
        with pytest.raises(RecipeError, match=match):
            load_recipe(None, bad, **SYN)


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
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k in SYN or k == 'select'}))
    train(cfg, tmp_path / 'single', progress=False)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={_free_port()}',
           str(ROOT / 'recipes' / 'train.py'), '--config', str(recipe), '--out', str(tmp_path / 'ddp'),
           '--no-progress']
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    r = json.loads((tmp_path / 'ddp' / 'results.json').read_text())
    assert r['world_size'] == 2
    a, b = _weights(tmp_path / 'single'), _weights(tmp_path / 'ddp')
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
