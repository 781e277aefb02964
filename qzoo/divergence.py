"""Training divergence: the one definition, read from a run's epoch log.

A run **diverged** at the first epoch ``e`` after its learning-rate warm-up (``e >= ceil(warmup_epochs)``)
where either

* ``loss``: the training loss rose above its running minimum ``m`` (the lowest training loss of the
  epochs before ``e``) by more than ``m`` itself (it more than doubled) *and* by more than a quarter of
  what training had gained by then (``L0 - m``, with ``L0`` the first epoch's loss): the second
  condition keeps the noise of losses near zero (0.002 -> 0.005) from counting; or
* ``nonfinite``: the model's outputs were NaN or inf for at least a tenth of the validation examples
  (``val_nonfinite`` in the log; :data:`NONFINITE_SHARE`): the model as evaluated is broken. Fewer
  non-finite outputs are an instability worth reporting (:func:`nonfinite_epochs`), not a divergence.

It **recovered** when a later epoch had a training loss at or below ``m`` and finite validation
outputs. :func:`detect` applies the rule to log records (``log.jsonl``: ``epoch``, ``train_loss``,
optionally ``val_nonfinite``) and the validation split's size, so it works for runs trained before it existed; the engine calls it
after every epoch (a warning the moment it happens, and ``results.json``'s ``divergence``),
publishing stores it in the weights record, and the card, ``results/efficiency.md``, the Pareto
plots and the README read it from there.

This module uses the standard library only.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = ['Divergence', 'detect', 'nonfinite_epochs', 'describe_nonfinite', 'read_log', 'RISE', 'GAIN_SHARE', 'NONFINITE_SHARE']

#: the loss must exceed the running minimum m by more than RISE * m (RISE = 1: it more than doubles) ...
RISE = 1.0
#: ... and by more than GAIN_SHARE of what training had gained by then (L0 - m)
GAIN_SHARE = 0.25
#: non-finite outputs on at least this share of the validation examples are a divergence
NONFINITE_SHARE = 0.1


@dataclass(frozen=True)
class Divergence:
    """Where and how a run diverged (see the module doc)."""
    epoch: int                        #: the first epoch the rule fired at
    trigger: str                      #: 'loss' or 'nonfinite'
    loss_before: float                #: the running minimum m of the training loss before that epoch
    loss: float                       #: the training loss of that epoch
    nonfinite: int = 0                #: validation outputs with NaN/inf values at that epoch
    recovered: bool = False           #: a later epoch got back to m with finite outputs
    recovered_epoch: Optional[int] = None
    peak_loss: float = 0.0            #: the highest training loss from ``epoch`` on

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> Optional['Divergence']:
        return None if not d else cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def what(self) -> str:
        """What happened, in words: 'the training loss rose from 0.503 to 2.16' or '10 validation outputs were NaN
        or inf (training loss 1.53)'."""
        if self.trigger == 'loss':
            return f'the training loss rose from {self.loss_before:.3g} to {self.loss:.3g}'
        n = self.nonfinite
        return f'{n:,} validation output{" was" if n == 1 else "s were"} NaN or inf (training loss {self.loss:.3g})'

    def sentence(self, selected_epoch: Optional[int] = None) -> str:
        """One sentence for a card: 'Training diverged at epoch 22: the training loss rose from 0.503 to 2.16; it
        never recovered (training loss up to 2.16). The weights are those of epoch 21, before it.'"""
        out = f'Training diverged at epoch {self.epoch}: {self.what()}; '
        out += (f'it recovered by epoch {self.recovered_epoch}.' if self.recovered else
                f'it never recovered (training loss up to {self.peak_loss:.3g}).')
        if selected_epoch is not None:
            when = 'before it' if selected_epoch < self.epoch else (
                'after the recovery' if self.recovered and selected_epoch >= (self.recovered_epoch or 0) else
                'after it, before any recovery')
            out += f' The weights are those of epoch {selected_epoch}, {when}.'
        return out

    def short(self) -> str:
        """A table note: 'diverged at epoch 22 (loss 0.503 → 2.16), never recovered'."""
        how = (f'loss {self.loss_before:.3g} → {self.loss:.3g}' if self.trigger == 'loss' else
               f'{self.nonfinite:,} NaN/inf validation output' + ('s' if self.nonfinite != 1 else ''))
        return f'diverged at epoch {self.epoch} ({how}), ' + (f'recovered by epoch {self.recovered_epoch}'
                                                            if self.recovered else 'never recovered')


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def detect(log: Sequence[Mapping[str, Any]], warmup_epochs: float = 0.0,
           n_val: Optional[int] = None) -> Optional[Divergence]:
    """The first divergence in epoch records ``log`` (in epoch order), or None (see the module doc); ``n_val`` is
    the number of validation examples (None: unknown, and any non-finite output counts). A record whose training
    loss is missing or not finite counts as a loss divergence with ``loss`` inf."""
    limit = 1 if not n_val else max(1, math.ceil(NONFINITE_SHARE * n_val))
    start = math.ceil(max(0.0, float(warmup_epochs or 0.0)))
    recs = sorted((r for r in log if isinstance(r, Mapping) and isinstance(r.get('epoch'), int)),
                  key=lambda r: r['epoch'])
    losses = [float(r['train_loss']) if _finite(r.get('train_loss')) else math.inf for r in recs]
    first = next((l for l in losses if math.isfinite(l)), None)
    m = math.inf
    for i, r in enumerate(recs):
        loss, bad = losses[i], int(r.get('val_nonfinite') or 0)
        if r['epoch'] >= start and math.isfinite(m):
            jump = loss - m > RISE * m and loss - m > GAIN_SHARE * (first - m)
            if jump or bad >= limit:
                return _with_recovery(recs[i:], losses[i:], r['epoch'], 'loss' if jump else 'nonfinite', m, bad)
        m = min(m, loss)
    return None


def _with_recovery(rest: List[Mapping[str, Any]], losses: List[float], epoch: int, trigger: str, m: float,
                   bad: int) -> Divergence:
    back = next((r['epoch'] for r, l in zip(rest[1:], losses[1:]) if l <= m and not r.get('val_nonfinite')), None)
    return Divergence(epoch=epoch, trigger=trigger, loss_before=m, loss=losses[0], nonfinite=bad,
                      recovered=back is not None, recovered_epoch=back, peak_loss=max(losses))


def nonfinite_epochs(log: Sequence[Mapping[str, Any]]) -> List[List[int]]:
    """``[[epoch, count], ...]``: the epochs whose validation outputs held NaN/inf values, and how many."""
    return [[r['epoch'], int(r['val_nonfinite'])] for r in log
            if isinstance(r, Mapping) and isinstance(r.get('epoch'), int) and r.get('val_nonfinite')]


def describe_nonfinite(events: Sequence[Sequence[int]], n_val: Optional[int] = None) -> str:
    """'validation outputs were NaN or inf at epochs 1, 2 (at most 2 of 67 examples)'."""
    epochs = ', '.join(str(e) for e, _ in events)
    most = max(c for _, c in events)
    return (f'validation outputs were NaN or inf at epoch{"s" if len(events) > 1 else ""} {epochs} (at most '
            f'{most:,}' + (f' of {n_val:,}' if n_val else '') + ' examples)')


def read_log(lines: Iterable[str]) -> List[Dict[str, Any]]:
    """Epoch records from the lines of a ``log.jsonl`` (blank lines skipped; a line that is not a JSON object
    raises ValueError naming its number)."""
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ValueError(f'line {i} is not JSON ({e})') from None
        if not isinstance(rec, dict):
            raise ValueError(f'line {i} is a JSON {type(rec).__name__}, not an object')
        out.append(rec)
    return out
