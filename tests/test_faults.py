"""Training faults: kill -9 then --resume, a second run on the same folder, failing writes (disk full,
unusable --out), damaged checkpoints, and train.py's error exit (the NaN guard is in test_engine.py)."""
import errno
import json
import os
import pickle
import signal
import sys
import time

import pytest
import torch
import yaml

import procs
from conftest import ROOT
from qzoo import fileio
from qzoo.engine import CheckpointWriteError, RunDir, load_recipe, train
from qzoo.errors import CheckpointError, RunDirError
from qzoo.hub import load_weights
from inject import Stop, stop_after_epoch

sys.path.insert(0, str(ROOT / 'recipes'))
import train as train_cli  # noqa: E402

SYN = dict(model='qmlp', model_args={'hidden': [16], 'drop_rate': 0.1}, data='synthetic',
           data_args={'kind': 'moons', 'n_train': 320, 'n_val': 64, 'n_test': 64},
           epochs=3, batch_size=32, optimizer='sgd', lr=0.05, select='last', eval_batch_size=64)

# a training run that stops for good (sleeps) just before writing epoch 1's checkpoint, after logging it
PAUSED_RUN = '''
import sys, time
from pathlib import Path
from qzoo import engine
out = Path(sys.argv[2])
save = engine._save_checkpoint
def save_or_pause(run, state):
    if state['epoch'] == 1:
        (out / 'paused').write_text('1')
        time.sleep(600)
    save(run, state)
engine._save_checkpoint = save_or_pause
engine.train(engine.load_recipe(sys.argv[1]), out, progress=False)
'''


def _epochs(out):
    return [json.loads(l)['epoch'] for l in (out / 'log.jsonl').read_text().splitlines()]


def _same_weights(a, b):
    wa, wb = load_weights(a / 'model.safetensors')[0], load_weights(b / 'model.safetensors')[0]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _wait_for(path, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f'the run ended early: {proc.stderr.read()}'
        assert time.monotonic() < deadline, 'the run did not reach the pause point'
        time.sleep(0.1)


def test_kill_9_then_resume_is_exact_logs_each_epoch_once_and_the_folder_is_locked(tmp_path):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(yaml.safe_dump(SYN))
    train(load_recipe(recipe), tmp_path / 'straight', progress=False)
    out = tmp_path / 'killed'
    with procs.group([procs.PYTHON, '-c', PAUSED_RUN, str(recipe), str(out)], env=procs.child_env(),
                     stdout=procs.subprocess.DEVNULL, stderr=procs.subprocess.PIPE, text=True) as proc:
        _wait_for(out / 'paused', proc)
        # a second run on the same folder fails at once, naming the folder, the holder and the fix
        with pytest.raises(RunDirError, match=f'{out} is in use by another training run \\(pid {proc.pid}') as e:
            train(load_recipe(recipe), out, progress=False)
        assert 'another --out' in str(e.value)
        assert _epochs(out) == [0, 1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(out / 'last.ckpt', weights_only=True)['epoch'] == 0   # epoch 1 logged, never checkpointed
    train(load_recipe(recipe), out, resume=True, progress=False)         # the lock died with the process
    assert _same_weights(tmp_path / 'straight', out)
    assert _epochs(out) == [0, 1, 2]


def test_a_held_lock_refuses_a_second_run(tmp_path):
    with RunDir(tmp_path / 'run'):
        with pytest.raises(RunDirError, match=f'in use by another training run \\(pid {os.getpid()}'):
            train(load_recipe(None, **SYN), tmp_path / 'run', progress=False)
    train(load_recipe(None, **dict(SYN, epochs=1)), tmp_path / 'run', progress=False)  # released


def _fail_nth_torch_save(monkeypatch, n):
    save, calls = torch.save, []

    def partial_then_disk_full(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == n:
            f.write(b'\0' * 100)
            raise OSError(errno.ENOSPC, 'No space left on device (injected)')
        return save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', partial_then_disk_full)


def test_failed_checkpoint_write_keeps_previous_and_resume_logs_each_epoch_once(tmp_path, monkeypatch):
    cfg = load_recipe(None, **SYN)
    with monkeypatch.context() as m:
        _fail_nth_torch_save(m, 2)
        with pytest.raises(CheckpointWriteError) as e:
            train(cfg, tmp_path, progress=False)
    assert 'previous checkpoint (epoch 0) is intact' in str(e.value) and 'No space left' in str(e.value)
    assert not list(tmp_path.glob('*.tmp')) and not list(tmp_path.glob('.*.tmp'))
    assert torch.load(tmp_path / 'last.ckpt', weights_only=True)['epoch'] == 0
    assert _epochs(tmp_path) == [0, 1]
    train(cfg, tmp_path, resume=True, progress=False)
    train(cfg, tmp_path / 'straight', progress=False)
    assert _same_weights(tmp_path / 'straight', tmp_path)
    assert _epochs(tmp_path) == [0, 1, 2]  # epoch 1 once, though it was logged before the failed write


def _fail_writes_of(monkeypatch, name, nth=1):
    """The nth atomic write of file ``name`` fails with ENOSPC (after a partial write)."""
    real, calls = fileio.atomic_open, []

    def failing(path, mode='wb'):
        if os.path.basename(path) == name:
            calls.append(1)
            if len(calls) == nth:
                return _partial_then_enospc(real(path, mode))
        return real(path, mode)
    monkeypatch.setattr(fileio, 'atomic_open', failing)


class _partial_then_enospc:
    def __init__(self, cm):
        self.cm = cm

    def __enter__(self):
        f = self.cm.__enter__()
        f.write(b'x' if 'b' in getattr(f, 'mode', 'w') else 'x')
        raise OSError(errno.ENOSPC, 'No space left on device (injected)')

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def test_disk_full_during_the_log_append(tmp_path, monkeypatch):
    cfg = load_recipe(None, **SYN)
    with monkeypatch.context() as m:
        _fail_writes_of(m, 'log.jsonl', nth=3)  # 1: the new empty log, 2: epoch 0, 3: epoch 1
        with pytest.raises(CheckpointWriteError, match=f'could not append epoch 1 to {tmp_path / "log.jsonl"}.*'
                                                       'No space left.*Fix: free disk space'):
            train(cfg, tmp_path, progress=False)
    assert _epochs(tmp_path) == [0]
    train(cfg, tmp_path, resume=True, progress=False)
    assert _epochs(tmp_path) == [0, 1, 2]


def test_disk_full_at_results_json_leaves_no_empty_file(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _fail_writes_of(m, 'results.json')
        with pytest.raises(CheckpointWriteError, match='results.json.*No space left.*--resume'):
            train(load_recipe(None, **SYN), tmp_path, progress=False)
    assert not (tmp_path / 'results.json').exists() and not list(tmp_path.glob('.*.tmp'))
    res = train(load_recipe(None, **SYN), tmp_path, resume=True, progress=False)  # finishes from the checkpoint
    assert json.loads((tmp_path / 'results.json').read_text())['test'] == res['test']


def test_unusable_out_folders_are_named(tmp_path, capsys):
    cfg = load_recipe(None, **SYN)
    f = tmp_path / 'file'
    f.write_text('x')
    with pytest.raises(RunDirError, match=f'the run folder {f} is a file'):
        train(cfg, f, progress=False)
    with pytest.raises(RunDirError, match=f'cannot create the run folder {f / "run"}'):
        train(cfg, f / 'run', progress=False)
    rc = train_cli.main(['--config', str(ROOT / 'recipes/synthetic/circles-d2.yaml'), '--out', str(f), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: the run folder') and 'Traceback' not in err


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_out_is_named(tmp_path):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match=f'cannot write in the run folder {ro}'):
            train(load_recipe(None, **SYN), ro, progress=False)
    finally:
        ro.chmod(0o755)


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoint at'):
        train(load_recipe(None, **SYN), tmp_path, resume=True, progress=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def _damage(kind, path):
    good = torch.load(path, weights_only=True)
    if kind == 'garbage':
        path.write_bytes(b'not a checkpoint at all' * 10)
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        path.write_bytes(path.read_bytes()[:500])
    elif kind == 'pickle':
        path.write_bytes(pickle.dumps({'model': _Evil()}))
    elif kind == 'missing-keys':
        torch.save({k: v for k, v in good.items() if k != 'optimizer'}, path)
    elif kind == 'not-a-dict':
        torch.save([1, 2, 3], path)
    elif kind == 'bad-epoch':
        torch.save(dict(good, epoch='one'), path)
    elif kind == 'wrong-shapes':
        torch.save(dict(good, model={k: torch.zeros(3) for k in good['model']}), path)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('kind', ['garbage', 'empty', 'truncated', 'pickle', 'missing-keys', 'not-a-dict', 'bad-epoch',
                                  'wrong-shapes'])
def test_damaged_checkpoint_is_named_with_the_fix(tmp_path, monkeypatch, kind):
    cfg = load_recipe(None, **SYN)
    with monkeypatch.context() as m:
        stop_after_epoch(m, 0)
        with pytest.raises(Stop):
            train(cfg, tmp_path, progress=False)
    ckpt = tmp_path / 'last.ckpt'
    _damage(kind, ckpt)
    with pytest.raises(CheckpointError) as e:
        train(cfg, tmp_path, resume=True, progress=False)
    msg = str(e.value)
    assert str(ckpt) in msg and f'delete {ckpt}' in msg and 'restore' in msg, msg
    assert 'weights_only' not in msg and 'Traceback' not in msg


def test_train_cli_reports_documented_errors_with_status_2(tmp_path, capsys):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(yaml.safe_dump(SYN))
    for extra, needle in ((['epochs=0'], 'epochs must be'), (['--resume'], 'no checkpoint at')):
        rc = train_cli.main(['--config', str(recipe), '--out', str(tmp_path / 'run'), '--no-progress'] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith('error: ') and needle in err, err
    (tmp_path / 'run' / 'last.ckpt').write_bytes(b'junk')
    rc = train_cli.main(['--config', str(recipe), '--out', str(tmp_path / 'run'), '--no-progress', '--resume'])
    assert rc == 2 and 'cannot be read as a training checkpoint' in capsys.readouterr().err
