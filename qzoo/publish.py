"""Publish a training run's folder as a zoo checkpoint: ``checkpoints/<arch>.<tag>/`` (the
Hugging Face repo layout), an entry in ``checkpoints/manifest.json`` (SHA-256, model args,
dataset, metrics) and regenerated ``MODEL_CARDS.md``.

Weights are stored in float16 when that leaves the test metric *unchanged* (measured by
evaluating the float16-rounded weights on the test split), else float32.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .cards import zoo_cards
from .hub import CHECKPOINTS_DIR, HF_ORG, MANIFEST, REPO_ROOT, from_pretrained, published, save_pretrained

__all__ = ['publish', 'set_default', 'write_cards', 'CARDS']

CARDS = REPO_ROOT / 'MODEL_CARDS.md'
_TAG = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def write_cards() -> Path:
    CARDS.write_text(zoo_cards(published(), CHECKPOINTS_DIR))
    return CARDS


FP16_TOLERANCE = 0.02  # points of the primary test metric that storing float16 may cost (2 images in 10k)


def _evaluate_here(model: torch.nn.Module, spec: Dict[str, Any]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{'float32'|'float16': {'val'|'test': metrics}}: ``model`` as trained and with its weights rounded
    to float16 (on a copy), evaluated here (float32 compute, this machine) on dataset ``spec``."""
    from .evaluation import evaluate_on
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return {dtype: {split: evaluate_on(m.eval(), spec['name'], split, spec['args'])[0] for split in ('val', 'test')}
            for dtype, m in (('float32', model), ('float16', rounded))}


def _choose_storage(results: Dict[str, Any], here, dtype: str):
    """The storage dtype and the fp16 check recorded with it. 'auto': float16 when the float16-rounded weights
    keep the primary test metric within FP16_TOLERANCE points of the float32 weights (both evaluated here)."""
    key = results['primary_metric']
    f32, f16 = here['float32']['test'][key], here['float16']['test'][key]
    check = dict(metric=key, fp32=f32, fp16=f16, unchanged=here['float16'] == here['float32'],
                 tolerance=FP16_TOLERANCE)
    if dtype == 'auto':
        dtype = 'float16' if abs(f16 - f32) <= FP16_TOLERANCE else 'float32'
    return dtype, check


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


def _recipe_overrides(run: Path, results: Dict[str, Any]) -> List[str]:
    """``key=value`` for every recipe key whose value in the run (its resolved recipe.yaml) differs from
    what the recipe file named in results.json gives today: the overrides the run was started with."""
    import yaml

    from .engine import load_recipe
    path = Path(results.get('recipe') or '')
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not results.get('recipe') or not path.is_file() or not (run / 'recipe.yaml').is_file():
        return []
    ran, now = yaml.safe_load((run / 'recipe.yaml').read_text()), load_recipe(path)
    return [f'{k}={json.dumps(ran.get(k), separators=(",", ":"))}' for k in sorted(set(ran) | set(now))
            if ran.get(k) != now.get(k) and (ran.get(k) or now.get(k))]  # None and {} alike


def publish(run_dir, tag: str, default: bool = False, dtype: str = 'auto') -> Dict[str, Any]:
    """Copy run folder ``run_dir`` into ``checkpoints/<arch>.<tag>/`` and register it.
    ``dtype``: 'auto' (float16 if it moves the primary test metric by at most FP16_TOLERANCE points),
    'float16' or 'float32'. The val/test metrics published are those of the stored weights evaluated here;
    where they differ from training's (another device, float16 rounding), training's stay in ``at_training``."""
    run = Path(run_dir)
    results = json.loads((run / 'results.json').read_text())
    if results.get('smoke'):
        raise ValueError(f'{run} is a --smoke run; publish real runs only')
    if not _TAG.match(tag):
        raise ValueError(f'tag {tag!r}: use letters, digits, ".", "_" and "-"')
    arch = results['model']
    name = f'{arch}.{tag}'
    model = from_pretrained(run)
    here = _evaluate_here(model, results['data_spec'])
    dtype, check = _choose_storage(results, here, dtype)
    store = {'float16': torch.float16, 'float32': torch.float32}[dtype]
    folder = CHECKPOINTS_DIR / name
    if folder.exists():
        shutil.rmtree(folder)
    results = dict(results, published_as=name, weights_dtype=dtype, fp16_check=check,
                   recipe_overrides=_recipe_overrides(run, results))
    mine = here[dtype]
    if (mine['val'], mine['test']) != (results['val'], results['test']):
        # what a user re-evaluating the published file gets: the card's numbers; those of training kept beside
        results['at_training'] = dict(val=results['val'], test=results['test'], device=results['device'])
        results.update(val=mine['val'], test=mine['test'],
                       metrics_from=f'the published {dtype} weights, evaluated in float32 on the CPU when published')
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
        # republishing keeps a default; the first checkpoint of an architecture becomes its default
        default=bool(default or entries.get(name, {}).get('default') or not any(
            e['architecture'] == arch and e.get('default') for n, e in entries.items() if n != name)),
    )
    _write_manifest(entries)
    write_cards()
    return entries[name]
