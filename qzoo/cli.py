"""The ``qzoo list``, ``qzoo info`` and ``qzoo cards`` commands (the ``qzoo`` entry point itself,
``qzoo_cli``, lives outside the package so that ``qzoo --help`` imports nothing heavy).

* :func:`list_main`: architectures with a one-line description, published weights
  (``<architecture>.<tag>``, parameters, dataset, test metric, the default marked), neuron
  families, datasets; a glob or substring filters the names; ``--json`` for scripts.
* :func:`info_main`: one name in detail: published weights (their record: data, metrics,
  training, file, why they are the default), an architecture (its cfg, exact parameter count
  and MACs, its published weights), a neuron family or a dataset.
* :func:`cards_main`: regenerate every generated file of the published weights from their records.
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import inspect
import json
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from .data import _loader as dataset_loader  # the loader function of a dataset name (its docstring describes it)
from .data import list_datasets
from .data import options as dataset_options
from .errors import CheckpointError
from .measure import count_macs, count_params
from .models import BASE_CFGS, MODEL_FACTORIES
from .neurons import get_neuron, list_neurons
from .registry import create_model, list_models, timm_name
from .weights import Weights, all_weights, weights_for

__all__ = ['list_main', 'info_main', 'cards_main', 'describe']

SECTIONS = ('architectures', 'pretrained', 'neurons', 'datasets')


# ---- text ------------------------------------------------------------------------------------
def _plain(text: str) -> str:
    """``text`` on one line, without reST markup (double backquotes, roles such as ``:data:``)."""
    return re.sub(r':\w+:`([^`]*)`', r'\1', ' '.join(text.split()).replace('``', ''))


def describe(obj: Any) -> str:
    """The first sentence of ``obj``'s docstring on one line (reST markup removed)."""
    text = _plain((inspect.getdoc(obj) or '').split('\n\n')[0])
    return re.split(r'(?<=\.)\s+(?=[A-Za-z])|;\s', text, maxsplit=1)[0]


def _matcher(pattern: Optional[str]) -> Callable[[str], bool]:
    """Case-insensitive: a glob when ``pattern`` has a wildcard, else a substring; None matches everything."""
    if not pattern:
        return lambda name: True
    p = pattern.lower()
    if any(c in p for c in '*?['):
        return lambda name: fnmatch.fnmatchcase(name.lower(), p)
    return lambda name: p in name.lower()


def _table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> List[str]:
    """Rows as left-aligned columns (the last one unpadded) under a header."""
    cells = [list(columns)] + [[str(r.get(c, '')) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns) - 1)]
    return ['  '.join([c.ljust(w) for c, w in zip(row[:-1], widths)] + [row[-1]]).rstrip() for row in cells]


def _number(v: float) -> str:
    """Two decimals (percentages), or three significant digits below 1 (losses such as mse)."""
    return f'{v:.2f}' if abs(v) >= 1 or v == 0 else f'{v:.3g}'


def _metric(w: Weights) -> str:
    """The primary test metric, e.g. ``top1 95.17``."""
    return f'{w.primary_metric} {_number(float(w.test[w.primary_metric]))}'



# ---- qzoo list -------------------------------------------------------------------------------
def _architecture_rows(match) -> List[Dict[str, Any]]:
    counts: Dict[str, int] = {}
    for w in all_weights().values():
        counts[w.architecture] = counts.get(w.architecture, 0) + 1
    return [dict(name=name, weights=counts.get(name, '-'), description=describe(fn))
            for name, fn in MODEL_FACTORIES.items() if match(name)]


def _weights_rows(match) -> List[Dict[str, Any]]:
    records = all_weights()
    return [dict(name=name, default='*' if records[name].default else '', params=f'{records[name].params:,}',
                 dataset=records[name].dataset, metric=_metric(records[name]))
            for name in list_models(pretrained=True) if match(name)]


def _neuron_rows(match) -> List[Dict[str, Any]]:
    rows = []
    for name in list_neurons():
        fam = get_neuron(name)
        rows.append(dict(name=name, weights=f'x{fam.param_multiplier}', linear_case='yes' if fam.has_linear_case
                         else 'no', formula=fam.formula))
    return [r for r in rows if match(r['name'])]


def _dataset_rows(match) -> List[Dict[str, Any]]:
    return [dict(name=n, description=describe(dataset_loader(n))) for n in list_datasets() if match(n)]


_LISTS = {
    'architectures': (_architecture_rows, ('name', 'weights', 'description'),
                      'architectures (qzoo info NAME for details; weights: how many are published)'),
    'pretrained': (_weights_rows, ('name', 'default', 'params', 'dataset', 'metric'),
                   "published weights (default *: what pretrained=True loads; metric: on the test split)"),
    'neurons': (_neuron_rows, ('name', 'weights', 'linear_case', 'formula'),
                'neuron families (weights: per conventional weight; linear_case: has a ReLinear init)'),
    'datasets': (_dataset_rows, ('name', 'description'), 'datasets (qzoo.data.load_dataset)'),
}


def _list_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description='List the zoo: architectures (default), published weights, neuron '
                                             'families, datasets.')
    ap.add_argument('pattern', nargs='?', help='keep names matching this glob (e.g. "q*") or containing this text; '
                                               'case-insensitive')
    ap.add_argument('--pretrained', action='store_true', help='published weights, as <architecture>.<tag>')
    ap.add_argument('--neurons', action='store_true', help='neuron families')
    ap.add_argument('--datasets', action='store_true', help='datasets')
    ap.add_argument('--architectures', action='store_true', help='architectures (the default when no other is given)')
    ap.add_argument('--all', action='store_true', help='every section')
    ap.add_argument('--json', action='store_true', help='one JSON object {section: [rows]} instead of tables')
    return ap


def list_main(argv: Optional[Sequence[str]] = None) -> int:
    """``qzoo list``: print the chosen sections as tables (or JSON); returns the exit status."""
    a = _list_parser().parse_args(argv)
    chosen = [s for s in SECTIONS if a.all or getattr(a, s)] or ['architectures']
    match = _matcher(a.pattern)
    try:
        found = {s: _LISTS[s][0](match) for s in chosen}
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(found, indent=1))
    else:
        blocks = [[f'# {_LISTS[s][2]}'] + (_table(rows, _LISTS[s][1]) if rows else ['(none)'])
                  for s, rows in found.items()]
        print('\n\n'.join('\n'.join(b) for b in blocks))
    if a.pattern and not any(found.values()):
        print(f'nothing matches {a.pattern!r}', file=sys.stderr)
        return 1
    return 0


# ---- qzoo info -------------------------------------------------------------------------------
def _fmt(v: Any, inner: bool = False) -> str:
    """A field's value: counts with thousands separators; metrics (a dict of floats) rounded; shapes, options and
    statistics (``inner``) as written."""
    if isinstance(v, float):
        return f'{v:g}' if inner else _number(v)
    if isinstance(v, (list, tuple)):
        return '(' + ', '.join(_fmt(x, True) for x in v) + ')'
    if isinstance(v, dict):
        return ', '.join(f'{k}={_number(x) if isinstance(x, float) else _fmt(x, True)}' for k, x in v.items()) or '-'
    return f'{v:,}' if isinstance(v, int) and not isinstance(v, bool) and not inner else str(v)


def _lines(title: str, fields: Dict[str, Any]) -> List[str]:
    width = max(len(k) for k in fields)
    return [title] + [f'  {k.ljust(width)}  {_fmt(v)}' for k, v in fields.items() if v not in (None, '', {}, ())]


def _weights_info(w: Weights) -> Dict[str, Any]:
    t = dict(w.training)
    training = ', '.join(x for x in (
        str(t.get('recipe') or ''), f'{t["epochs"]} epochs' if t.get('epochs') else '',
        f'selected epoch {t["selected_epoch"]} ({t.get("selection", "")})' if t.get('selected_epoch') is not None
        else '', f'seed {w.seed}', str(t.get('device') or ''),
        f'{t["wall_time_s"] / 60:.1f} min' if t.get('wall_time_s') else '') if x)
    return {'architecture': w.architecture, 'model_args': dict(w.model_args), 'tag': w.tag, 'dataset': w.dataset,
            'data (qzoo.data)': f'{w.data_spec["name"]} ' + _fmt(dict(w.data_spec.get('args', {}))),
            'task': f'{w.task}, {w.num_classes} classes' if w.task == 'classification' else w.task,
            'labels': w.label_names, 'params': w.params, 'MACs': f'{w.macs:,} per sample of {_fmt(w.input_size)}',
            'neuron': w.neuron, 'test': f'{_fmt(dict(w.test))} (primary: {w.primary_metric})', 'val': dict(w.val),
            'training': training, 'overrides': ' '.join(t.get('recipe_overrides') or ()),
            'weights': f'{w.weights_dtype}, sha256 {w.sha256}', 'file': str(w.file),
            'card': str(w.folder / 'README.md'), 'default': f'yes: {w.default_reason}' if w.default else 'no',
            'license': w.license, 'hf hub': w.hf_hub_id,
            'load': f"timm.create_model('{w.name}', pretrained=True)   # after import qzoo"}


def _architecture_info(name: str) -> Dict[str, Any]:
    cfg = BASE_CFGS[name]
    model = create_model(name)
    c, h, wd = cfg['input_size']
    shape = (1, c) if (h, wd) == (1, 1) else (1, c, wd) if h == 1 else (1, c, h, wd)
    published = weights_for(name)
    return {'description': _plain(inspect.getdoc(MODEL_FACTORIES[name]) or ''),
            'timm name': timm_name(name), 'params': count_params(model),
            'MACs': f'{count_macs(model, shape):,} per input of shape {shape}',
            'neuron': getattr(model, 'neuron', None),
            'input_size': cfg['input_size'], 'num_classes': cfg.get('num_classes'), 'mean': cfg.get('mean'),
            'std': cfg.get('std'), 'license': cfg.get('license'), 'papers': cfg.get('paper_ids'),
            'published weights': ', '.join(w.name + (' (default)' if w.default else '') for w in published) or 'none',
            'build': f"qzoo.create_model('{name}'{', pretrained=True' if published else ''})"}


def _neuron_info(name: str) -> Dict[str, Any]:
    fam = get_neuron(name)
    return {'formula': fam.formula, 'weights per conventional weight': fam.param_multiplier,
            'terms': ', '.join(getattr(t, 'name', str(t)) for t in fam.terms),
            'linear special case (ReLinear init)': 'yes' if fam.has_linear_case else 'no', 'source': fam.citation,
            'use': f"qzoo.QuadraticConv2d(16, 32, 3, neuron='{fam.spec}')"}


def _dataset_info(name: str) -> Dict[str, Any]:
    return {'description': _plain(inspect.getdoc(dataset_loader(name)) or ''),
            'options (defaults)': ', '.join(f'{k}={v!r}' for k, v in dataset_options(name).items()),
            'load': f"qzoo.data.load_dataset('{name}')"}


def _all_names() -> List[str]:
    return list(all_weights()) + list(MODEL_FACTORIES) + list_neurons() + list_datasets()


def _resolve(name: str):
    """``(kind, title, fields)`` for a weights, architecture, neuron or dataset name; CheckpointError /
    ValueError naming the nearest names otherwise."""
    if name in all_weights():
        w = all_weights()[name]
        return 'weights', f'{name}: published weights' + (f' (the default of {w.architecture})' if w.default
                                                          else ''), _weights_info(w)
    if name in MODEL_FACTORIES:
        return 'architecture', f'{name}: architecture', _architecture_info(name)
    if name in list_neurons() or name.split('(')[0] in list_neurons():
        return 'neuron', f'{name}: neuron family', _neuron_info(name)
    if name in list_datasets():
        return 'dataset', f'{name}: dataset', _dataset_info(name)
    close = difflib.get_close_matches(name, _all_names(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    raise ValueError(f'{name!r} is not a published weights, architecture, neuron or dataset name of qzoo{hint} '
                     f'(qzoo list --all lists them)')


def info_main(argv: Optional[Sequence[str]] = None) -> int:
    """``qzoo info NAME``: print what qzoo knows about NAME; returns the exit status."""
    ap = argparse.ArgumentParser(description='Details of published weights (<architecture>.<tag>: the record behind '
                                             'its card), an architecture, a neuron family or a dataset.')
    ap.add_argument('name', help='e.g. qcnn.cwru-snr-6db-s1, qcnn, fan, cwru')
    ap.add_argument('--json', action='store_true', help='the fields as one JSON object')
    a = ap.parse_args(argv)
    try:
        kind, title, fields = _resolve(a.name)
    except (ValueError, CheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if a.json:
        w = all_weights().get(a.name) if kind == 'weights' else None
        record = dict(w.to_dict(), file=str(w.file), card=str(w.folder / 'README.md')) if w else fields
        print(json.dumps(dict(name=a.name, kind=kind, **record), indent=1, default=str))
    else:
        print('\n'.join(_lines(title, fields)))
    return 0


# ---- qzoo cards ------------------------------------------------------------------------------
def cards_main(argv: Optional[Sequence[str]] = None) -> int:
    """``qzoo cards``: regenerate every published folder's config.json and card, the defaults and MODEL_CARDS.md
    from the weights records (weights untouched)."""
    from .publish import index_path, refresh
    argparse.ArgumentParser(description='Regenerate every published folder\'s config.json and README.md card, '
                                        'each architecture\'s default and MODEL_CARDS.md from the weights records '
                                        '(qzoo/checkpoints/manifest.json, or $QZOO_CHECKPOINTS); the weights are '
                                        'untouched.').parse_args(argv)
    try:
        n = refresh()
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'{n} checkpoints; index {index_path()}')
    return 0
