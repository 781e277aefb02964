"""Publish a training run's folder as a zoo checkpoint: ``checkpoints/<arch>.<tag>/`` (the
Hugging Face repo layout), an entry in ``checkpoints/manifest.json`` (SHA-256, model args,
dataset, metrics) and regenerated ``MODEL_CARDS.md``.

Weights are stored in float16 when that leaves the test metric *unchanged* (measured by
evaluating the float16-rounded weights on the test split), else float32.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .cards import zoo_cards
from .hub import CHECKPOINTS_DIR, HF_ORG, MANIFEST, REPO_ROOT, from_pretrained, published, save_pretrained

__all__ = ['publish', 'set_default', 'write_cards', 'CARDS']

CARDS = REPO_ROOT / 'MODEL_CARDS.md'
_TAG = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def write_cards() -> Path:
    CARDS.write_text(zoo_cards(published(), CHECKPOINTS_DIR))
    return CARDS


def _fp16_unchanged(run: Path, results: Dict[str, Any]) -> Dict[str, Any]:
    from .evaluation import evaluate_on
    spec = results['data_spec']
    model = from_pretrained(run)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    metrics, _ = evaluate_on(model, spec['name'], 'test', spec['args'])
    key = results['primary_metric']
    return dict(metric=key, fp32=results['test'][key], fp16=metrics[key],
                unchanged=metrics == results['test'])


def _write_manifest(entries: Dict[str, Any]) -> None:
    CHECKPOINTS_DIR.mkdir(exist_ok=True)
    tmp = MANIFEST.with_name(MANIFEST.name + '.tmp')  # atomic: other processes read it at import
    tmp.write_text(json.dumps(dict(sorted(entries.items())), indent=2) + '\n')
    os.replace(tmp, MANIFEST)


def set_default(name: str) -> None:
    """Make published checkpoint ``name`` its architecture's ``pretrained=True`` default."""
    entries = published()
    if name not in entries:
        raise ValueError(f'{name!r} is not published; published: {", ".join(sorted(entries))}')
    arch = entries[name]['architecture']
    for k, e in entries.items():
        if e['architecture'] == arch:
            e['default'] = k == name
    _write_manifest(entries)
    write_cards()


def publish(run_dir, tag: str, default: bool = False, dtype: str = 'auto') -> Dict[str, Any]:
    """Copy run folder ``run_dir`` into ``checkpoints/<arch>.<tag>/`` and register it.
    ``dtype``: 'auto' (float16 if the test metrics are unchanged), 'float16' or 'float32'."""
    run = Path(run_dir)
    results = json.loads((run / 'results.json').read_text())
    if results.get('smoke'):
        raise ValueError(f'{run} is a --smoke run; publish real runs only')
    if not _TAG.match(tag):
        raise ValueError(f'tag {tag!r}: use letters, digits, ".", "_" and "-"')
    arch = results['model']
    name = f'{arch}.{tag}'
    check = None
    if dtype == 'auto':
        check = _fp16_unchanged(run, results)
        store = torch.float16 if check['unchanged'] else torch.float32
    else:
        store = {'float16': torch.float16, 'float32': torch.float32}[dtype]
    model = from_pretrained(run)
    folder = CHECKPOINTS_DIR / name
    if folder.exists():
        shutil.rmtree(folder)
    results = dict(results, published_as=name, weights_dtype=str(store).replace('torch.', ''),
                   fp16_check=check)
    save_pretrained(model, folder, results=results, dtype=store, name=name)
    for f in ('recipe.yaml', 'log.jsonl'):
        shutil.copy2(run / f, folder / f)
    (folder / 'results.json').write_text(json.dumps(results, indent=2))
    cfg = json.loads((folder / 'config.json').read_text())
    entries = published()
    if default:
        for e in entries.values():
            if e['architecture'] == arch:
                e['default'] = False
    entries[name] = dict(
        architecture=arch, tag=tag, model_args=cfg.get('model_args', {}), folder=name,
        sha256=cfg['qzoo']['sha256'], hf_hub_id=f'{HF_ORG}/{name}', dataset=results['dataset'],
        data_spec=results['data_spec'], task=results['task'], num_classes=cfg['num_classes'],
        input_size=cfg['pretrained_cfg']['input_size'], params=results['params'], macs=results['macs'],
        neuron=results['neuron'], seed=results['seed'], group=re.sub(r'-s\d+$', '', tag),
        primary_metric=results['primary_metric'], test=results['test'], val=results['val'],
        default=bool(default or not any(e['architecture'] == arch and e.get('default') for e in entries.values())),
    )
    _write_manifest(entries)
    write_cards()
    return entries[name]
