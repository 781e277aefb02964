"""Model cards: one per checkpoint folder (README.md with YAML front matter, for the
Hugging Face hub) and MODEL_CARDS.md for the whole zoo, both generated from the
checkpoints' own config.json (timm format + a ``qzoo`` block with results)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

__all__ = ['model_card', 'zoo_cards']

CITATION = """@article{fan2023one,
  title   = {One Neuron Saved Is One Neuron Earned: On Parametric Efficiency of Quadratic Networks},
  author  = {Fan, Feng-Lei and Dong, Hang-Cheng and Wu, Zhongming and Ruan, Lecheng and Zeng, Tieyong
             and Cui, Yiming and Liao, Jing-Xiao},
  journal = {arXiv preprint arXiv:2303.06316},
  year    = {2023}
}"""


def _fmt(v):
    if isinstance(v, float):
        return f'{v:.4g}' if abs(v) < 1 else f'{v:.2f}'
    return str(v)


def _duration(seconds) -> str:
    seconds = float(seconds or 0)
    return f'{seconds:.1f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def _pipeline_tag(res: Dict[str, Any]) -> str:
    """Hugging Face task tag from the task and the input rank (image / 1-D signal / tabular)."""
    rank = len(res.get('macs_input') or [0, 0, 0, 0]) - 1
    kind = {3: 'image', 2: 'signal', 1: 'tabular'}.get(rank, 'image')
    task = res.get('task', 'classification')
    if task == 'segmentation':
        return 'image-segmentation'
    if kind == 'signal':
        return 'signal-classification'
    return f'{kind}-{"regression" if task == "regression" else "classification"}'


def _metrics_lines(res: Dict[str, Any]) -> List[str]:
    lines = []
    for split in ('val', 'test'):
        m = res.get(split) or {}
        if m:
            lines.append(f"- **{split}** ({res.get('dataset', '?')}, split `{split}`): " +
                         ', '.join(f'{k} {_fmt(v)}' for k, v in m.items()))
    tr = res.get('at_training')
    if tr:
        lines = [l + f" ({res.get('metrics_from', '')})" for l in lines]
        lines.append(f"- **at training** (evaluated on {tr.get('device', '?')} at the end of the run): " + '; '.join(
            f'{split} ' + ', '.join(f'{k} {_fmt(v)}' for k, v in (tr.get(split) or {}).items()) for split in ('val', 'test')))
    return lines


def _body(config: Dict[str, Any], name: str, heading: bool = True) -> str:
    qz = config.get('qzoo', {})
    res = qz.get('results', {})
    arch = config['architecture']
    args = config.get('model_args', {})
    pc = config.get('pretrained_cfg', {})
    lines = ([f'## {name}', ''] if heading else []) + [
             f'- **architecture**: `{arch}` with model args `{json.dumps(args, sort_keys=True)}`',
             f"- **neuron**: `{qz.get('neuron', '?')}`",
             f"- **parameters**: {qz.get('params', '?'):,}" if isinstance(qz.get('params'), int) else
             f"- **parameters**: {qz.get('params', '?')}"]
    if res:
        lines += [f"- **task / dataset**: {res.get('task', '?')} on `{res.get('dataset', '?')}`",
                  f"- **MACs** (quadratic-aware, one sample {res.get('macs_input', '')}): {res.get('macs', '?'):,}"
                  if isinstance(res.get('macs'), int) else f"- **MACs**: {res.get('macs', '?')}",
                  f"- **checkpoint selection**: {res.get('selection', '?')} (selected epoch {res.get('selected_epoch', '?')} "
                  f"of {res.get('epochs', '?')}); the test split was used once, for the numbers below",
                  f"- **seed**: {res.get('seed', '?')}; **recipe**: `{res.get('recipe', '?')}`"
                  + (' with `' + ' '.join(res['recipe_overrides']) + '`' if res.get('recipe_overrides') else '')
                  + f" (resolved recipe sha256 `{str(res.get('recipe_sha256', '?'))[:16]}…`, in `recipe.yaml`)",
                  f"- **training**: {_duration(res.get('wall_time_s'))} on {res.get('device', '?')}, "
                  f"torch {res.get('torch', '?')}"]
        lines += _metrics_lines(res)
    dtype = qz.get('weights_dtype', '?')
    fp16 = res.get('fp16_check') or {}
    if fp16:
        m, a, b = fp16['metric'], _fmt(fp16['fp32']), _fmt(fp16['fp16'])
        if fp16.get('unchanged'):
            dtype += f' (float16 leaves the test {m} unchanged: {b})'
        elif dtype == 'float16':
            dtype += (f" (float16 moves the test {m} {a} -> {b}, within the {fp16.get('tolerance')}-point tolerance; "
                      f"the val/test numbers above are those of the float16 weights)")
        else:
            dtype += f' (float16 would change the test {m}: {a} -> {b})'
    lines += [f"- **weights**: `model.safetensors`, sha256 `{qz.get('sha256', '?')}`, stored as {dtype}",
              f"- **input**: {pc.get('input_size')}, mean {pc.get('mean')}, std {pc.get('std')}",
              f"- **license**: {pc.get('license', '?')}",
              '', '```python',
              'import qzoo, timm, torch']
    if '.' in name:
        arch, tag = name.split('.', 1)
        lines += [f"model = timm.create_model('{name}', pretrained=True)   # after `import qzoo`",
                  f"model = qzoo.create_model('{name}', pretrained=True)",
                  f"model = torch.hub.load('<owner>/qzoo', '{arch}', pretrained=True, pretrained_cfg='{tag}', "
                  f"trust_repo=True)"]
    else:
        lines.append("model = qzoo.hub.from_pretrained('<this folder or hf-hub:org/name>')")
    lines.append('```')
    return '\n'.join(lines) + '\n'


def model_card(config: Dict[str, Any], name: str = None) -> str:
    """A Hugging Face model card (README.md) for one checkpoint folder's config.json."""
    qz = config.get('qzoo', {})
    res = qz.get('results', {})
    pc = config.get('pretrained_cfg', {})
    name = name or (f"{config['architecture']}.{pc['tag']}" if pc.get('tag') else config['architecture'])
    front = ['---', 'library_name: timm', f"license: {pc.get('license', 'apache-2.0')}",
             'tags:', f'- {_pipeline_tag(res)}',
             '- quadratic-neurons', '- qzoo']
    if res.get('dataset'):
        front += ['datasets:', f"- {res['dataset']}"]
    front += ['---', '']
    return '\n'.join(front) + f'# {name}\n\n' + _body(config, name, heading=False) + \
        f'\n## Citation\n\n```bibtex\n{CITATION}\n```\n'


def zoo_cards(entries: Dict[str, Dict[str, Any]], root: Path) -> str:
    """MODEL_CARDS.md: every published checkpoint's card, from its folder's config.json."""
    out = ['# qzoo model cards', '',
           'Generated by `make cards` (eval/cards.py) from `checkpoints/*/config.json`; '
           'a test fails when this file is stale. Metrics are on the named dataset\'s *test* split, '
           'measured once after model selection on the *validation* split.', '']
    if not entries:
        out += ['No checkpoints are published yet.', '']
    for name in sorted(entries):
        cfg = json.loads((root / entries[name]['folder'] / 'config.json').read_text())
        out.append(_body(cfg, name))
    out += ['## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(out)
