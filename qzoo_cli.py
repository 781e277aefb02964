"""The ``qzoo`` command: one entry point, one subcommand per job.

This module lives outside the ``qzoo`` package on purpose: ``import qzoo.<anything>`` runs
``qzoo/__init__.py``, which imports torch and timm and registers every model (seconds). Here only
the standard library is imported until a subcommand runs, so ``qzoo --help`` answers at once; a
subcommand imports its module and hands it the rest of the command line (``qzoo <command> --help``
is that module's own help).
"""
import sys

#: command -> (module, function taking argv, one-line summary); in the order of ``qzoo --help``
COMMANDS = {
    'list': ('qzoo.cli', 'list_main', 'architectures, published weights, neuron families, datasets'),
    'info': ('qzoo.cli', 'info_main', 'details of published weights, an architecture, a neuron family or a dataset'),
    'export': ('qzoo.export', 'main', 'a model (optionally with published weights) as a checked ONNX file'),
    'train': ('qzoo.engine', 'main', 'train a model from a recipe (YAML), resume, smoke-test'),
    'launch': ('qzoo.launch', 'main', 'run recipes side by side, fit them to a time budget; the GPU presets'),
    'validate': ('qzoo.evaluation', 'main', 'score weights on a dataset split'),
    'eval': ('qzoo.efficiency', 'main', 'accuracy per parameter of the published weights, with intervals'),
    'compare': ('qzoo.comparison', 'main', "your own weights on the zoo's curves (by parameters or MACs), with intervals"),
    'bench': ('qzoo.benchmark', 'cli', 'speed of models and quadratic layers (CPU, CUDA, ONNX); the GPU suite'),
    'publish': ('qzoo.publish', 'main', 'publish training runs as zoo weights; pin defaults; refresh'),
    'cards': ('qzoo.cli', 'cards_main', 'regenerate config.json, cards and MODEL_CARDS.md from the records'),
}

USAGE = 'usage: qzoo [--help] [--version] <command> [<args>]'


def help_text() -> str:
    """What ``qzoo --help`` prints."""
    width = max(map(len, COMMANDS))
    rows = '\n'.join(f'  {name.ljust(width)}  {summary}' for name, (_, _, summary) in COMMANDS.items())
    return (f'{USAGE}\n\nqzoo: a model zoo for quadratic neural networks (timm-registered models, published '
            f'weights, recipes).\n\ncommands:\n{rows}\n\n'
            f'`qzoo <command> --help` (or `qzoo help <command>`) shows a command\'s options. Commands that read '
            f'files of a\nrepository checkout (recipes/, data/, tests/) say so when they run from an installed '
            f'package.\n')


def version() -> str:
    """qzoo's version, read without importing the package (from the installed metadata, else its __init__.py)."""
    import re
    from importlib import metadata, util
    try:
        return metadata.version('qzoo')
    except metadata.PackageNotFoundError:
        spec = util.find_spec('qzoo')
        text = open(spec.origin, encoding='utf-8').read() if spec and spec.origin else ''
        found = re.search(r"^__version__ = '([^']+)'", text, re.M)
        return found.group(1) if found else 'unknown'


def _unknown(name: str) -> int:
    import difflib
    close = difflib.get_close_matches(name, list(COMMANDS) + ['help'], n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else f"; the commands are {', '.join(COMMANDS)}"
    print(f"{USAGE}\nqzoo: unknown command '{name}'{hint} (qzoo --help describes them)", file=sys.stderr)
    return 2


def run(name: str, argv) -> int:
    """Import command ``name``'s module and call its function with ``argv``; its exit status."""
    import importlib
    module_name, function, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        module = None
    fn = getattr(module, function, None)
    if fn is None:
        print(f'qzoo {name}: this installation of qzoo has no {module_name}.{function}(argv), which the command '
              f'runs ({module_name} {"has no such function" if module else "is missing"}); update qzoo',
              file=sys.stderr)
        return 1
    prog, sys.argv[0] = sys.argv[0], f'qzoo {name}'  # argparse's prog: `usage: qzoo <name> ...`
    try:
        status = fn(list(argv))
    finally:
        sys.argv[0] = prog
    return 0 if status is None else int(status)


def main(argv=None) -> int:
    """``qzoo [--help | --version | <command> [<args>]]``; returns the exit status (2 for a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(help_text(), file=sys.stdout if argv else sys.stderr, end='')
        return 0 if argv else 2
    if argv[0] == '--version':
        print(f'qzoo {version()}')
        return 0
    if argv[0] == 'help':
        return main(argv[1:2] + ['--help'] if argv[1:] else ['--help'])
    if argv[0].startswith('-'):
        print(f"{USAGE}\nqzoo: unknown option '{argv[0]}' (options go after the command: qzoo <command> "
              f"{argv[0]} ...)", file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        return _unknown(argv[0])
    try:
        return run(argv[0], argv[1:])
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qzoo list | head`: the reader left; say nothing more
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == '__main__':
    sys.exit(main())
