"""The shape of the code: qzoo's modules form layers (neuron math, layers, models, weights, data, engine,
evaluation, tools) and no import runs upward, including imports inside functions; no import cycle; no
function longer than about 60 lines."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / 'qzoo'

#: each module's layer, lowest first; a module imports only lower layers (or its own package's siblings)
LAYERS = [
    ('errors', 'fileio', 'divergence', 'checkout'),  # the documented exceptions, file helpers, the divergence rule,
                                                     # the checkout
    ('cards',),                                # card text
    ('neurons',),                              # the neuron math
    ('layers',),                               # quadratic layers on the neurons
    ('relinear', 'measure'),                   # optimizer groups and counts, on the layers
    ('models',),                               # model families on the layers
    ('serialization',),                        # weights files
    ('weights',),                              # published-weights records
    ('registry',),                             # timm registration, pretrained=True
    ('hub',),                                  # any weights into a model; save / push
    ('external',),                             # external checkpoints
    ('data',),                                 # datasets
    ('metrics',),                              # metrics and losses
    ('recipe',),                               # the recipe schema
    ('monitor',),                              # per-step training diagnostics
    ('engine',),                               # training
    ('stats', 'evaluation'),                   # evaluation and its uncertainty
    ('efficiency', 'publish', 'export'),       # the zoo's jobs
    ('trainspeed',),                           # training speed in the recipes' own loop
    ('benchmark', 'launch'),                   # the tools that measure (exported models too) and run them
    ('cli',),                                  # the command line: list, info, cards
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PKG.rglob('*.py')):
        if 'checkpoints' in path.parts:
            continue
        rel = path.relative_to(PKG).with_suffix('')
        parts = [p for p in rel.parts if p != '__init__']
        yield path, parts


def _imports(path, parts):
    """The qzoo modules ``path`` imports (top-level and inside functions), as top-level component names."""
    tree = ast.parse(path.read_text())
    pkg_parts = parts if path.name == '__init__.py' else parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[:len(pkg_parts) - node.level + 1] if node.level > 1 else pkg_parts
                target = base + (node.module.split('.') if node.module else [])
                if not target:  # 'from . import x' at the package root
                    target = [alias.name for alias in node.names][:1]
            elif node.module and node.module.split('.')[0] == 'qzoo':
                target = node.module.split('.')[1:] or [alias.name for alias in node.names][:1]
            else:
                continue
            found.add(target[0] if target else '')
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split('.')[0] == 'qzoo' and '.' in alias.name:
                    found.add(alias.name.split('.')[1])
    return found


def test_every_module_has_a_layer():
    missing = sorted({parts[0] for _, parts in _modules() if parts and parts[0] not in RANK})
    assert not missing, f'modules without a layer in LAYERS: {missing}'


def test_no_import_runs_upward():
    bad = []
    for path, parts in _modules():
        if not parts:  # qzoo/__init__.py: the package's public face imports from every layer
            continue
        me = RANK[parts[0]]
        for target in _imports(path, parts):
            if target == parts[0] or target not in RANK:
                continue
            if RANK[target] >= me:
                bad.append(f'{path.relative_to(ROOT)} ({parts[0]}, layer {me}) imports {target} (layer {RANK[target]})')
    assert not bad, 'imports that run upward or sideways:\n' + '\n'.join(bad)


def test_no_import_cycle_between_modules():
    graph = {}
    for path, parts in _modules():
        if parts:
            graph.setdefault(parts[0], set()).update(t for t in _imports(path, parts) if t in RANK and t != parts[0])
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            pytest.fail('import cycle: ' + ' -> '.join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)
    for node in sorted(graph):
        visit(node)


def _function_lengths():
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], 'value', None), ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    body = body[1:]  # the docstring does not count
                if body:
                    yield path, node.name, body[-1].end_lineno - body[0].lineno + 1


def test_no_function_longer_than_about_60_lines():
    long = [f'{p.relative_to(ROOT)}:{name} ({n} lines)' for p, name, n in _function_lengths() if n > 60]
    assert not long, 'functions over 60 lines (split them):\n' + '\n'.join(long)
