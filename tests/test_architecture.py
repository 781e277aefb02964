"""The shape of the code: qzoo's modules form layers (neuron math, layers, models, weights, data, engine,
evaluation, tools) and no import runs upward, including imports inside functions; no import cycle, between
the layers nor among the modules inside a package (qzoo/data, qzoo/models); no function longer than about
60 lines."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / 'qzoo'

#: each module's layer, lowest first; a module imports only lower layers (or its own package's siblings)
LAYERS = [
    ('errors',),                               # the documented exceptions
    ('fileio', 'divergence', 'checkout', 'bounds'),  # file helpers, the divergence rule, the checkout, bounds on inputs
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
    ('curves',),                               # the zoo's curves: groups, intervals, frontiers, the Pareto plot
    ('efficiency', 'publish', 'export', 'comparison'),   # the zoo's jobs (make eval, publish, export, qzoo compare)
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


def _targets(path, parts):
    """The qzoo modules ``path`` imports (top-level and inside functions), each as its parts below qzoo
    (``['data', 'loader']`` for qzoo/data/loader.py; ``from . import x`` names the module ``x`` it imports)."""
    tree = ast.parse(path.read_text())
    pkg_parts = parts if path.name == '__init__.py' else parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[:len(pkg_parts) - node.level + 1] if node.level > 1 else pkg_parts
                target = base + (node.module.split('.') if node.module else [])
            elif node.module and node.module.split('.')[0] == 'qzoo':
                target = node.module.split('.')[1:]
            else:
                continue
            if node.module is None or not target:  # 'from . import x': x is a module of that package
                found.update(tuple(target + [alias.name]) for alias in node.names)
            else:
                found.add(tuple(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split('.')[0] == 'qzoo' and '.' in alias.name:
                    found.add(tuple(alias.name.split('.')[1:]))
    return found


def _imports(path, parts):
    """The qzoo modules ``path`` imports, as top-level component names (their layers)."""
    return {target[0] for target in _targets(path, parts)}


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


def _find_cycle(graph):
    """One import cycle of ``graph`` (node -> the nodes it imports) as a list of nodes, or None."""
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in seen:
            return None
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle:
                return cycle
        stack.pop()
        seen.add(node)
        return None
    return next((c for c in map(visit, sorted(graph)) if c), None)


def test_no_import_cycle_between_modules():
    graph = {}
    for path, parts in _modules():
        if parts:
            graph.setdefault(parts[0], set()).update(t for t in _imports(path, parts) if t in RANK and t != parts[0])
    cycle = _find_cycle(graph)
    assert not cycle, 'import cycle: ' + ' -> '.join(cycle)


PACKAGES = sorted({parts[0] for path, parts in _modules() if path.name == '__init__.py' and parts})


@pytest.mark.parametrize('package', PACKAGES)
def test_no_import_cycle_inside_a_package(package):
    """Among the modules of one package (its __init__ included, under the package's name): two modules that
    import each other, even inside a function, or a module that imports its own package, form a cycle."""
    modules = {'.'.join(parts): (path, parts) for path, parts in _modules() if parts and parts[0] == package}
    assert len(modules) > 1, f'qzoo/{package}: no modules found'

    def module_of(target):  # 'from .x import name' reaches module x; 'from . import name' the package or x
        return next(('.'.join(target[:n]) for n in range(len(target), 0, -1) if '.'.join(target[:n]) in modules),
                    None)
    graph = {me: {module_of(t) for t in _targets(path, parts)} - {None, me} for me, (path, parts) in modules.items()}
    cycle = _find_cycle(graph)
    assert not cycle, f'import cycle inside qzoo/{package}: ' + ' -> '.join(cycle)


def _function_lengths():
    """(file, function, lines): a function's lines from its ``def`` to its end, its docstring left out."""
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    lines -= first.end_lineno - first.lineno + 1  # the docstring does not count
                yield path, node.name, lines


def test_no_function_longer_than_about_60_lines():
    long = [f'{p.relative_to(ROOT)}:{name} ({n} lines)' for p, name, n in _function_lengths() if n > 60]
    assert not long, 'functions over 60 lines (split them):\n' + '\n'.join(long)
