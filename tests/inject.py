"""Faults injected into the training engine by monkeypatching (the engine has no fault hooks)."""
from qzoo import engine


class Stop(Exception):
    """Raised by stop_after_epoch: a run interrupted once an epoch's checkpoint is written."""


def stop_after_epoch(monkeypatch, epoch):
    save = engine._save_checkpoint

    def save_then_stop(run, state):
        save(run, state)
        if state['epoch'] == epoch:
            raise Stop(epoch)
    monkeypatch.setattr(engine, '_save_checkpoint', save_then_stop)


def nan_at_step(monkeypatch, step):
    """Training loss NaN at global step ``step`` (0-based, counted over the run)."""
    make = engine.loss_fn
    calls = []

    def patched(task, label_smoothing=0.0):
        loss = make(task, label_smoothing)

        def f(out, y):
            calls.append(1)
            value = loss(out, y)
            return value * float('nan') if len(calls) - 1 == step else value
        return f
    monkeypatch.setattr(engine, 'loss_fn', patched)
