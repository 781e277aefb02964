"""Model cards, as text: a card per checkpoint folder (``README.md`` with the Hugging Face
front matter) and ``MODEL_CARDS.md``, the zoo's index.

A published checkpoint's card is written from its :class:`~qzoo.weights.Weights` record
(carried in its ``config.json`` under ``qzoo.weights``); a folder saved by
:func:`qzoo.hub.save_pretrained` outside the zoo gets a shorter card from its config.json.
This module formats only: it reads no files and imports nothing of qzoo but the divergence rule's wording
(:mod:`qzoo.divergence`).
"""
from __future__ import annotations

import json
import statistics
from typing import Any, Dict, Iterable, List, Mapping, Optional

__all__ = ['model_card', 'zoo_index', 'CITATION']

CITATION = """@article{fan2023one,
  title   = {One Neuron Saved Is One Neuron Earned: On Parametric Efficiency of Quadratic Networks},
  author  = {Fan, Feng-Lei and Dong, Hang-Cheng and Wu, Zhongming and Ruan, Lecheng and Zeng, Tieyong
             and Cui, Yiming and Liao, Jing-Xiao},
  journal = {arXiv preprint arXiv:2303.06316},
  year    = {2023}
}"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4g}' if abs(v) < 1 else f'{v:.2f}'
    return str(v)


def _duration(seconds) -> str:
    seconds = float(seconds or 0)
    return f'{seconds:.1f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def _metrics(m: Mapping[str, float]) -> str:
    return ', '.join(f'{k} {_fmt(v)}' for k, v in m.items())


def _pipeline_tag(task: str, input_size) -> str:
    """Hugging Face task tag from the task and timm's input_size: (C, H, W) images, (C, 1, L) signals,
    (features, 1, 1) tabular data."""
    if task == 'segmentation':
        return 'image-segmentation'
    size = list(input_size or (3, 224, 224))
    kind = 'tabular' if size[1:] == [1, 1] else 'signal' if size[1:2] == [1] else 'image'
    return f'{kind}-{"regression" if task == "regression" else "classification"}'


def _front(license: str, tag: str, dataset: Optional[str]) -> List[str]:
    front = ['---', 'library_name: timm', f'license: {license}', 'tags:', f'- {tag}', '- quadratic-neurons', '- qzoo']
    if dataset:
        front += ['datasets:', f'- {dataset}']
    return front + ['---', '']


def _training_lines(w: Mapping[str, Any]) -> List[str]:
    t = w.get('training', {})
    recipe = f"`{t.get('recipe', '?')}`" + (' with `' + ' '.join(t['recipe_overrides']) + '`'
                                              if t.get('recipe_overrides') else '')
    lines = [f"- **recipe**: {recipe}, seed {w['seed']} (resolved recipe in `recipe.yaml`, sha256 "
             f"`{str(t.get('recipe_sha256', '?'))[:16]}…`)",
             f"- **selection**: {t.get('selection', '?')} — epoch {t.get('selected_epoch', '?')} of "
             f"{t.get('epochs', '?')}; the test split was used once, for the numbers above",
             _trained_on(t)]
    for chosen in (t.get('provenance') or {}).get('chosen') or ():
        lines.append(f'- **chosen on validation**: {chosen}')
    if t.get('tuning'):
        lines.append(_tuning_line(t['tuning'], 'conventional' if w['neuron'] == 'linear' else 'quadratic'))
    if t.get('divergence'):
        lines.append(f"- **training diverged**: {_divergence_sentence(t['divergence'], t.get('selected_epoch'))}")
    elif t.get('nonfinite'):
        from .divergence import describe_nonfinite
        lines.append(f"- **numerical instability**: {describe_nonfinite(t['nonfinite'], (t.get('splits') or {}).get('val'))}"
                     f"; fewer than a tenth of them, so not a divergence (qzoo.divergence); the weights are those of "
                     f"epoch {t.get('selected_epoch')}, whose outputs are finite")
    if t.get('splits'):
        lines.append('- **data**: ' + ', '.join(f'{k} {v:,}' for k, v in t['splits'].items()) +
                     f" samples of `{w['dataset']}` (qzoo.data `{w['data_spec']['name']}`, options "
                     f"`{json.dumps(w['data_spec'].get('args', {}), sort_keys=True)}`)")
    at = t.get('at_training')
    if at:
        lines.append(f"- **at training** (evaluated on {at.get('device', '?')} at the end of the run): "
                     + '; '.join(f'{s} {_metrics(at.get(s) or {})}' for s in ('val', 'test')))
    return lines


def _budget(b: Mapping[str, Any]) -> str:
    """'4 validation trials of 10 epochs: <summary>', 'no validation trials: ...', 'trials not recorded: ...'."""
    n, epochs = b.get('trials'), b.get('epochs')
    head = ('trials not recorded' if n is None else 'no validation trials' if n == 0 else
            f"{n} validation trial{'s' if n != 1 else ''}" + (f' of {epochs} epochs' if epochs else ''))
    return f"{head}: {b['summary']}" if b.get('summary') else head


def _tuning_line(tuning: Mapping[str, Any], family: str) -> str:
    """The card's tuning budget: this model's family first, then the other family of the same experiment
    (recipes/tuning.yaml), so that a reader weighs the comparison by the weaker side's tuning."""
    order = [family] + [f for f in ('conventional', 'quadratic') if f != family]
    return ('- **tuning budget** (before the published runs of this experiment): ' +
            '. '.join(f'{f} models, {_budget(tuning[f])}' for f in order if f in tuning))


def _trained_on(t: Mapping[str, Any]) -> str:
    """'- **trained on**: NVIDIA H200, bfloat16 autocast, channels_last, 4.0 min, torch 2.11.0+cu130, timm 1.0.31,
    code 7e66537'."""
    pv = t.get('provenance') or {}
    parts = [str(t.get('device', '?'))]
    if pv:
        parts.append(_precision(pv.get('amp') or 'off'))
        parts.append('channels_last' if pv.get('channels_last') else 'contiguous (NCHW) memory format')
    parts += [_duration(t.get('wall_time_s')), f"torch {t.get('torch', '?')}"]
    if pv:
        parts.append(f"timm {pv.get('timm') or 'not recorded'}")
        code = pv.get('commit') or (f"source sha256 {pv['source_sha256'][:12]}…" if pv.get('source_sha256') else
                                    'not recorded')
        parts.append(f'code {code}')
    return '- **trained on**: ' + ', '.join(parts)


def _divergence_sentence(d: Mapping[str, Any], selected_epoch) -> str:
    """The card's divergence note (qzoo.divergence.Divergence.sentence, from the record's dict)."""
    from .divergence import Divergence
    return Divergence.from_dict(d).sentence(selected_epoch)


def _weights_line(w: Mapping[str, Any]) -> str:
    fp16 = w.get('training', {}).get('fp16_check') or {}
    dtype = w['weights_dtype']
    if fp16:
        m, a, b = fp16['metric'], _fmt(fp16['fp32']), _fmt(fp16['fp16'])
        if fp16.get('unchanged'):
            dtype += f' (float16 leaves the test {m} unchanged: {b})'
        elif dtype == 'float16':
            dtype += (f" (float16 moves the test {m} {a} -> {b}, within the {fp16.get('tolerance')}-point tolerance; "
                      f"the metrics above are those of the float16 weights)")
        else:
            dtype += f' (float16 would change the test {m}: {a} -> {b})'
    return f"- **weights**: `model.safetensors`, sha256 `{w['sha256']}`, stored as {dtype}"


def _usage(w: Mapping[str, Any]) -> List[str]:
    name = f"{w['architecture']}.{w['experiment']}-s{w['seed']}"
    return ['```python', 'import qzoo, timm, torch', '',
            f"model = timm.create_model('{name}', pretrained=True).eval()   # after `import qzoo`",
            f"model = qzoo.create_model('{name}', pretrained=True).eval()",
            f"model = torch.hub.load('<path to a qzoo checkout>', '{w['architecture']}', source='local', "
            f"pretrained=True, pretrained_cfg='{w['experiment']}-s{w['seed']}')",
            '```']


def _precision(amp) -> str:
    return '?' if amp is None else 'float32' if amp == 'off' else f'{amp} autocast'


def _settings(s: Mapping[str, Any]) -> str:
    return ', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}' for k, v in s.items())


def _related_lines(w: Mapping[str, Any], related: List[Mapping[str, Any]]) -> List[str]:
    """'## Other runs of this architecture': one line per other experiment, with what differs."""
    if not related:
        return []
    mine = w.get('training', {})
    lines = ['## Other runs of this architecture', '',
             f"This run: {mine.get('device', '?')}, {_precision((mine.get('provenance') or {}).get('amp'))}, "
             f"{_settings(mine.get('key_settings') or {}) or 'settings not recorded'}; test {w['primary_metric']} "
             f"{_fmt(w['test'][w['primary_metric']])}" + (', diverged' if mine.get('divergence') else '') + '.', '']
    for r in related:
        seeds = len(r['seeds'])
        lines.append(f"- `{w['architecture']}.{r['experiment']}` on `{r['dataset']}` ({seeds} seed"
                     f"{'s' if seeds > 1 else ''}): test {r['metric']} {_fmt(r['mean'])}"
                     + (' (mean)' if seeds > 1 else '') + f"; {r.get('device') or '?'}, {_precision(r.get('amp'))}, "
                     f"{_settings(r.get('settings') or {}) or 'settings not recorded'}"
                     + (f"; {r['diverged']} of {seeds} diverged" if r.get('diverged') else '; none diverged'))
    return lines + ['']


def published_card(w: Mapping[str, Any], related: Optional[List[Mapping[str, Any]]] = None) -> str:
    """The card of a published checkpoint, from its record as a dict (:meth:`Weights.to_dict`) and the summaries
    of its architecture's other experiments (``related``)."""
    name = f"{w['architecture']}.{w['experiment']}-s{w['seed']}"
    default = (f"**Yes**: `pretrained=True` on `{w['architecture']}` loads these weights. {w['default_reason']}"
               if w.get('default') else f"no (see `{w['architecture']}`'s default in MODEL_CARDS.md)")
    lines = _front(w['license'], _pipeline_tag(w['task'], w['input_size']), w['dataset']) + [
        f'# {name}', '',
        f"`{w['architecture']}` trained on `{w['dataset']}` ({w['task']}), seed {w['seed']}.", '',
        f"- **architecture**: `{w['architecture']}`" + (f" with `{json.dumps(w['model_args'], sort_keys=True)}`"
                                                         if w['model_args'] else '') + f", neuron `{w['neuron']}`",
        f"- **parameters**: {w['params']:,}; **MACs** (quadratic-aware, one input {list(w['input_size'])}): "
        f"{w['macs']:,}",
        f"- **validation** (`{w['dataset']}`, split `val`): {_metrics(w['val'])}",
        f"- **test** (`{w['dataset']}`, split `test`): {_metrics(w['test'])}"
        + (f" ({w['training']['metrics_from']})" if w['training'].get('metrics_from') else ''),
        f'- **default weights**: {default}',
    ] + _training_lines(w) + [
        _weights_line(w),
        f"- **classes** (output order): {', '.join(w['label_names'])}" if w.get('label_names') else
        f"- **output**: {w['num_classes']} channel(s) ({w['task']})",
        f"- **license**: {w['license']}", ''] + _related_lines(w, related or []) + ['## Use', ''] + _usage(w) + [
        '', '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def model_card(config: Mapping[str, Any], name: Optional[str] = None) -> str:
    """A card for a folder's config.json: the published record's card when the config carries one
    (``qzoo.weights``), else a short card for a folder saved by ``save_pretrained``."""
    qz = config.get('qzoo', {})
    if qz.get('weights'):
        return published_card(qz['weights'], qz.get('related'))
    pc = config.get('pretrained_cfg', {})
    res = qz.get('results') or {}
    name = name or config['architecture']
    lines = _front(pc.get('license', 'apache-2.0'), _pipeline_tag(res.get('task', 'classification'), pc.get('input_size')),
                   res.get('dataset')) + [
        f'# {name}', '',
        f"- **architecture**: `{config['architecture']}` with model args "
        f"`{json.dumps(config.get('model_args', {}), sort_keys=True)}`, neuron `{qz.get('neuron', '?')}`",
        f"- **parameters**: {qz.get('params', '?'):,}" if isinstance(qz.get('params'), int) else
        f"- **parameters**: {qz.get('params', '?')}"]
    for split in ('val', 'test'):
        if res.get(split):
            lines.append(f"- **{split}** (`{res.get('dataset', '?')}`): {_metrics(res[split])}")
    lines += [f"- **weights**: `model.safetensors`, sha256 `{qz.get('sha256', '?')}`, stored as "
              f"{qz.get('weights_dtype', '?')}", '', '```python', 'import qzoo',
              "model = qzoo.hub.from_pretrained('<this folder>')", '```', '',
              '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def _spread(values: List[float]) -> str:
    if len(values) < 2:
        return f'{values[0]:.2f}'
    return f'{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}'


def zoo_index(records: Iterable[Mapping[str, Any]], folder_url: str = 'qzoo/checkpoints') -> str:
    """MODEL_CARDS.md: one table row per published checkpoint, grouped by dataset, with the
    experiment's mean ± std over seeds beside each and the architecture's default marked."""
    recs = sorted(records, key=lambda w: (w['dataset'], w['architecture'], w['experiment'], w['seed']))
    groups: Dict[str, List[float]] = {}
    for w in recs:
        groups.setdefault(f"{w['architecture']}.{w['experiment']}", []).append(w['test'][w['primary_metric']])
    out = ['# qzoo model cards', '',
           'Generated from the weights records (`qzoo/checkpoints/manifest.json`) by `make cards`; a test fails '
           'when this file is stale. Each name links to its card. Metrics are on the named dataset\'s *test* split, '
           'measured once after selecting the epoch on the *validation* split; "experiment" is the mean ± std over '
           'its seeds (sample std). ★ marks the weights `pretrained=True` loads for that architecture.', '']
    if not recs:
        return '\n'.join(out + ['No checkpoints are published yet.', ''])
    dataset = None
    for w in recs:
        if w['dataset'] != dataset:
            dataset = w['dataset']
            out += ['', f'## {dataset} (test {w["primary_metric"]})', '',
                    '| weights | params | MACs | val | test | experiment (seeds) | dtype |',
                    '|---|---:|---:|---:|---:|---:|---|']
        name = f"{w['architecture']}.{w['experiment']}-s{w['seed']}"
        key = w['primary_metric']
        g = groups[f"{w['architecture']}.{w['experiment']}"]
        out.append(f"| {'★ ' if w.get('default') else ''}[{name}]({folder_url}/{name}/README.md) | {w['params']:,} | "
                   f"{w['macs']:,} | {w['val'][key]:.2f} | {w['test'][key]:.2f} | {_spread(g)} ({len(g)}) | "
                   f"{w['weights_dtype']} |")
    out += ['', '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(out)
