"""Training faults: kill -9 mid-epoch then --resume, a failing checkpoint write, and NaN
(the NaN guard itself is in test_engine.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import ROOT
from qzoo.engine import CheckpointWriteError, load_recipe, train
from qzoo.hub import load_weights

SYN = dict(model='qmlp', model_args={'hidden': [16], 'drop_rate': 0.1}, data='synthetic',
           data_args={'kind': 'moons', 'n_train': 320, 'n_val': 64, 'n_test': 64},
           epochs=3, batch_size=32, optimizer='sgd', lr=0.05, select='last', eval_batch_size=64)


def test_kill_9_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(yaml.safe_dump(SYN))
    train(load_recipe(recipe), tmp_path / 'straight', progress=False)
    out = tmp_path / 'killed'
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    steps = 320 // 32
    cmd = [sys.executable, str(ROOT / 'recipes' / 'train.py'), '--config', str(recipe), '--out', str(out),
           '--no-progress', f'fault.pause_at_step={steps + 4}']     # inside epoch 1
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (out / 'paused').exists():
            assert proc.poll() is None and time.time() < deadline, 'training did not reach the pause point'
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(out / 'last.ckpt', weights_only=True)
    assert state['epoch'] == 0                                   # epoch 1 was lost mid-way
    res = subprocess.run([sys.executable, str(ROOT / 'recipes' / 'train.py'), '--config', str(recipe), '--out',
                          str(out), '--no-progress', '--resume'], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a, _ = load_weights(tmp_path / 'straight' / 'model.safetensors')
    b, _ = load_weights(out / 'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(l)['epoch'] for l in (out / 'log.jsonl').read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_failed_checkpoint_write_keeps_previous(tmp_path):
    cfg = load_recipe(None, **SYN)
    with pytest.raises(CheckpointWriteError) as e:
        train(dict(cfg, fault={'fail_save_at_epoch': 1}), tmp_path, progress=False)
    assert 'previous checkpoint (epoch 0) is intact' in str(e.value) and 'No space left' in str(e.value)
    assert not list(tmp_path.glob('*.tmp'))
    state = torch.load(tmp_path / 'last.ckpt', weights_only=True)
    assert state['epoch'] == 0
    # and the run resumes from it to the same weights as an uninterrupted one
    train(cfg, tmp_path, resume=True, progress=False)
    train(cfg, tmp_path / 'straight', progress=False)
    a, _ = load_weights(tmp_path / 'straight' / 'model.safetensors')
    b, _ = load_weights(tmp_path / 'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoint at'):
        train(load_recipe(None, **SYN), tmp_path, resume=True, progress=False)
