"""qzoo.recipe: every key typed and ranged, YAML with base inheritance, dotted overrides, and the
resolved text that runs record (byte-equal for every published checkpoint)."""
import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from qzoo.recipe import Recipe, RecipeError, load_recipe, recipe_help

SYN = dict(model='qmlp', data='synthetic')


def test_published_runs_resolve_to_their_recorded_recipe_byte_for_byte():
    """Every published checkpoint's recipe file, with the overrides its record keeps, resolves to the
    recipe.yaml stored beside the weights, and to the recorded hash."""
    from qzoo.weights import all_weights
    records = all_weights()
    assert len(records) >= 99  # the zoo's checkpoints when this was written
    for name, w in sorted(records.items()):
        t = w.training
        r = load_recipe(ROOT / t['recipe'], t['recipe_overrides'])
        assert r.to_yaml() == (w.folder / 'recipe.yaml').read_text(), name
        assert r.sha256() == t['recipe_sha256'], name


def test_every_recipe_file_loads():
    files = [p for p in (ROOT / 'recipes').rglob('*.yaml') if not p.name.startswith('_') and p.name != 'tuning.yaml']
    assert len(files) >= 40
    for f in files:
        r = load_recipe(f)
        assert r.model and r.data and r.name


@pytest.mark.parametrize('override, key', [
    ('epochs=0', 'epochs'), ('epochs=-3', 'epochs'), ('batch_size=0', 'batch_size'),
    ('eval_batch_size=0', 'eval_batch_size'),
    ('grad_clip=-1', 'grad_clip'), ('grad_clip=0', 'grad_clip'), ('weight_decay=-1', 'weight_decay'),
    ('warmup_epochs=-1', 'warmup_epochs'), ('min_lr_ratio=5', 'min_lr_ratio'), ('amp=fp16', 'amp'), ('amp=on', 'amp'),
    ('channels_last=maybe', 'channels_last'), ('nesterov=maybe', 'nesterov'), ('compile="false"', 'compile'),
    ('compile=fast', 'compile'), ('compile=1', 'compile'), ('compile=reduce_overhead', 'compile'),
    ('deterministic=1', 'deterministic'), ('nan_check_every=0', 'nan_check_every'),
    ('label_smoothing=2', 'label_smoothing'), ('label_smoothing=1', 'label_smoothing'), ('betas=[0.9]', 'betas'),
    ('betas=[0.9, 1.0]', 'betas'), ('betas=0.9', 'betas'), ('select=best', 'select'), ('optimizer=adam', 'optimizer'),
    ('schedule=cos', 'schedule'), ('lr=0', 'lr'), ('lr=fast', 'lr'), ('lr=nan', 'lr'), ('lr=.inf', 'lr'),
    ('lr=true', 'lr'), ('momentum=1', 'momentum'), ('seed=-1', 'seed'), ('seed=true', 'seed'), ('epochs=2.5', 'epochs'),
    ('quad_lr_scale=-0.1', 'quad_lr_scale'), ('quad_weight_decay=-1', 'quad_weight_decay'), ('device=gpu0', 'device'),
    ('smoke.epochs=0', 'smoke.epochs'), ('smoke.train=0', 'smoke.train'), ('model_args=[1]', 'model_args'),
    ('name=""', 'name'), ('name=../../elsewhere', 'name'), ('name=a b', 'name'), ('seed=18446744073709551616', 'seed'),
    ('epochs=1e400', 'epochs'), ('device=meta', 'device'),
])
def test_impossible_values_are_refused_naming_key_and_source(override, key):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, [override], **SYN)
    msg = str(e.value)
    assert f'{key} must be' in msg and f'override {override!r}' in msg, msg


def test_values_a_recipe_may_take():
    r = load_recipe(None, ['grad_clip=null', 'grad_clip=1.5', 'min_lr_ratio=1', 'label_smoothing=0.1', 'amp=off',
                           'channels_last=true', 'compile=false', 'betas=[0.8, 0.99]', 'device=cuda:1', 'seed=3',
                           'quad_weight_decay=0', 'smoke.train=null'], **SYN)
    assert (r.grad_clip, r.min_lr_ratio, r.label_smoothing, r.amp, r.channels_last, r.compile) == \
           (1.5, 1, 0.1, 'off', True, False)
    assert r.betas == [0.8, 0.99] and r.device == 'cuda:1' and r.smoke['train'] is None and r.quad_weight_decay == 0
    assert load_recipe(None, ['amp=bf16', 'channels_last=auto'], **SYN).amp == 'bf16'


def test_compile_takes_auto_and_the_torch_compile_modes_and_records_the_default_as_before():
    from qzoo.engine import CUDA_COMPILE_MODE, _compile_mode
    from qzoo.recipe import COMPILE_MODES
    cpu, cuda = torch.device('cpu'), torch.device('cuda', 0)
    # false (the default) is still recorded as it always was: published recipes keep their text and sha256
    assert Recipe.defaults()['compile'] is False and 'compile: false\n' in load_recipe(None, **SYN).to_yaml()
    want = {False: (None, None), True: ('default', 'default'), 'auto': (None, CUDA_COMPILE_MODE)}
    want.update({m: (m, m) for m in COMPILE_MODES})
    for value, (on_cpu, on_cuda) in want.items():
        r = load_recipe(None, [f'compile={json.dumps(value)}'], **SYN)
        assert r.compile == value and yaml.safe_load(r.to_yaml())['compile'] == value
        assert (_compile_mode(r, cpu), _compile_mode(r, cuda)) == (on_cpu, on_cuda), value
    assert CUDA_COMPILE_MODE in COMPILE_MODES
    with pytest.raises(RecipeError, match="compile must be true, false, 'auto' or a torch.compile mode "
                                          "\\('default', 'reduce-overhead'"):
        load_recipe(None, ['compile=fastest'], **SYN)
    with pytest.raises(RecipeError, match='set compile: false for a monitored run'):
        load_recipe(None, ['compile=auto', 'monitor_every=5'], **SYN)  # hooks do not run under compile on CUDA


def test_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 as a string: a launch.py --grid quad_lr_scale=1e-4,... once crashed in the optimizer
    r = load_recipe(None, ['quad_lr_scale=1e-4', 'epochs=3.0', 'grad_clip=null'], **SYN)
    assert r.quad_lr_scale == 1e-4 and isinstance(r.quad_lr_scale, float)
    assert r.epochs == 3 and isinstance(r.epochs, int) and r.grad_clip is None
    f = tmp_path / 'r.yaml'
    f.write_text('model: qmlp\ndata: synthetic\nlr: 1e-2\nweight_decay: 5E-4\nbetas: [9e-1, "0.99"]\n')
    r = load_recipe(f)
    assert r.lr == 0.01 and r.weight_decay == 5e-4 and r.betas == [0.9, 0.99]


def test_ints_given_to_float_keys_keep_their_text():
    # published recipe.yaml files record `warmup_epochs: 2`, not 2.0: the sha256 depends on it
    r = load_recipe(None, ['warmup_epochs=2'], **SYN)
    assert 'warmup_epochs: 2\n' in r.to_yaml()


def test_unknown_keys_name_the_nearest_valid_one(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe key 'epohcs'; did you mean 'epochs'"):
        load_recipe(None, **SYN, epohcs=3)
    with pytest.raises(RecipeError, match="'smoke.epoch'; did you mean 'smoke.epochs'"):
        load_recipe(None, ['smoke.epoch=2'], **SYN)
    f = tmp_path / 'r.yaml'
    f.write_text('model: qmlp\ndata: synthetic\nsmoke: {train: 8, tset: 8}\n')
    with pytest.raises(RecipeError, match=r"r.yaml \(line 3\).*'smoke.tset'; did you mean 'smoke.test'"):
        load_recipe(f)
    f.write_text('model: qmlp\ndata: synthetic\nlearning_rate: 0.1\n')
    with pytest.raises(RecipeError, match=r"line 3\): unknown recipe key 'learning_rate'"):
        load_recipe(f)
    with pytest.raises(RecipeError, match='fault injection is not a recipe key'):
        load_recipe(None, ['fault.nan_at_step=3'], **SYN)
    with pytest.raises(RecipeError, match="unknown model 'qmpl'; did you mean 'qmlp'"):
        load_recipe(None, ['model=qmpl'], data='synthetic')
    with pytest.raises(RecipeError, match="unknown data 'synthtic'; did you mean 'synthetic'"):
        load_recipe(None, ['data=synthtic'], model='mlp')
    with pytest.raises(RecipeError, match="has no option 'kindd'; did you mean data_args.kind"):
        load_recipe(None, ['data_args.kindd=moons'], **SYN)
    with pytest.raises(RecipeError, match="needs 'model'"):
        load_recipe(None, data='synthetic')


def test_overrides_and_values():
    with pytest.raises(RecipeError, match='key=value'):
        load_recipe(None, ['epochs'], **SYN)
    with pytest.raises(RecipeError, match='not valid YAML'):
        load_recipe(None, ['model_args.hidden=[4'], **SYN)
    with pytest.raises(RecipeError, match='lr is not a mapping'):
        load_recipe(None, ['lr.x=3'], **SYN)
    r = load_recipe(None, ['model_args.hidden=[4, 4]', 'lr=0.3', 'smoke.epochs=2', 'data_args.kind=moons'], **SYN)
    assert r.model_args == {'hidden': [4, 4]} and r.lr == 0.3 and r.data_args == {'kind': 'moons'}
    assert r.smoke == {'train': 64, 'val': 32, 'test': 32, 'epochs': 2, 'batch_size': 16}  # merged with the defaults
    assert r.name == 'qmlp-synthetic'


def test_base_inheritance_merges_mappings(tmp_path):
    (tmp_path / 'base.yaml').write_text('model: qmlp\ndata: synthetic\ndata_args: {kind: moons, n_val: 50}\n'
                                        'model_args: {hidden: [4], act: relu}\nlr: 0.5\n')
    (tmp_path / 'child.yaml').write_text('base: base.yaml\ndata_args: {n_val: 60}\nmodel_args: {hidden: [8]}\n')
    r = load_recipe(tmp_path / 'child.yaml', ['model_args.act=gelu'])
    assert r.lr == 0.5 and r.data_args == {'kind': 'moons', 'n_val': 60}
    assert r.model_args == {'hidden': [8], 'act': 'gelu'}
    # keyword values replace model_args whole (and merge the other mappings)
    assert load_recipe(tmp_path / 'child.yaml', model_args={'hidden': [2]}).model_args == {'hidden': [2]}


def test_base_cycles_and_bad_yaml_are_named(tmp_path):
    (tmp_path / 'self.yaml').write_text('base: self.yaml\nmodel: qmlp\ndata: synthetic\n')
    with pytest.raises(RecipeError, match='cycle'):
        load_recipe(tmp_path / 'self.yaml')
    (tmp_path / 'a.yaml').write_text('base: b.yaml\n')
    (tmp_path / 'b.yaml').write_text('base: a.yaml\n')
    with pytest.raises(RecipeError, match=r'cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)'):
        load_recipe(tmp_path / 'a.yaml')
    (tmp_path / 'c.yaml').write_text('base: missing.yaml\n')
    with pytest.raises(RecipeError, match='missing.yaml not found'):
        load_recipe(tmp_path / 'c.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: qmlp\ndata: synthetic\nmodel_args: {hidden: [4]\nlr: 0.1\n')
    with pytest.raises(RecipeError, match=r'bad.yaml is not valid YAML at line \d+, column \d+'):
        load_recipe(bad)
    bad.write_text('- a\n- b\n')
    with pytest.raises(RecipeError, match='must be a YAML mapping'):
        load_recipe(bad)
    bad.write_text('model: qmlp\ndata: synthetic\nlr: 0.1\nlr: 0.2\n')
    with pytest.raises(RecipeError, match="'lr' is given twice \\(lines 3 and 4\\)"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match='not found'):
        load_recipe(ROOT / 'recipes' / 'nope.yaml')


def test_recipe_dataclass_checks_itself_and_round_trips():
    r = load_recipe(ROOT / 'recipes/cifar10-jpeg75/qresnet20-w16.yaml')
    assert Recipe(**r.to_dict()) == r and load_recipe(None, **r.to_dict()).sha256() == r.sha256()
    assert load_recipe(None, **yaml.safe_load(r.to_yaml())) == r
    # a key added after runs were published is recorded only when set, so old recipes keep their sha256
    assert 'monitor_every' not in yaml.safe_load(r.to_yaml())
    assert yaml.safe_load(r.replace(monitor_every=10).to_yaml())['monitor_every'] == 10
    with pytest.raises(RecipeError, match='epochs must be'):
        r.replace(epochs=0)
    s = r.for_smoke()
    assert (s.epochs, s.batch_size, s.eval_batch_size, s.device, s.amp, s.compile) == (1, 16, 64, 'cpu', 'off', False)
    assert (r.warmup_epochs, s.warmup_epochs) == (2, 1)  # a smoke run's warm-up is no longer than the run
    assert s.sha256() != r.sha256() and r.epochs == 50  # frozen: r unchanged
    with pytest.raises(Exception):
        r.epochs = 3


def test_help_lists_every_key_with_its_range():
    text = recipe_help()
    for key in Recipe.specs():
        assert f'\n  {key} ' in '\n' + text, key
    assert "one of 'auto', 'bf16', 'off'" in text and 'a number in [0, 1)' in text


# ---- bounded inputs: files, bases, YAML, values that make training meaningless ----------------------
@contextlib.contextmanager
def _within(seconds):
    """Fail (TimeoutError) instead of hanging when the block takes longer than ``seconds``."""
    def fire(*_):
        raise TimeoutError(f'still running after {seconds} s')
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize('base', ['/dev/zero', 'fifo', 'folder', 'big.yaml'])
def test_a_base_that_is_not_a_small_regular_file_is_refused_at_once(tmp_path, base):
    """`base: /dev/zero` read 2.2 GB before failing and a FIFO blocked for ever: bases are regular files of at
    most 1 MiB, checked before they are opened."""
    os.mkfifo(tmp_path / 'fifo')
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'big.yaml').write_text('# padding\n' * 120_000)
    (tmp_path / 'r.yaml').write_text(f'base: {base}\nmodel: qmlp\ndata: synthetic\n')
    want = {'/dev/zero': 'is a character device, not a regular file', 'fifo': 'is a FIFO (named pipe), not a regular '
            'file', 'folder': 'is a folder, not a regular file', 'big.yaml': 'holds 1.1 MiB, more than a recipe may '
            '(1.0 MiB)'}[base]
    with _within(20), pytest.raises(RecipeError, match=re.escape(want)) as e:
        load_recipe(tmp_path / 'r.yaml')
    assert str(Path(base) if base.startswith('/') else tmp_path / base) in str(e.value)


def test_a_base_chain_is_bounded(tmp_path):
    for i in range(20):
        (tmp_path / f'{i}.yaml').write_text(f'base: {i + 1}.yaml\n')
    (tmp_path / '20.yaml').write_text('model: qmlp\ndata: synthetic\n')
    with pytest.raises(RecipeError, match='its base: chain is longer than 16 files'):
        load_recipe(tmp_path / '0.yaml')
    assert load_recipe(tmp_path / '10.yaml').model == 'qmlp'  # ten bases are fine


_BOMB = ('a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n'
         'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n'
         'e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n'
         'g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n')  # 10**7 values in 7 lines


def test_yaml_alias_bombs_are_refused_before_anything_walks_them(tmp_path):
    """A few lines of nested aliases expand to 10**7 values: json.dumps, the recipe's sha256 or a deep copy of them
    take minutes and gigabytes. Refused when read, from a file or an override."""
    f = tmp_path / 'r.yaml'
    f.write_text('model: qmlp\ndata: synthetic\nmodel_args:\n  ' + _BOMB.replace('\n', '\n  '))
    with _within(20), pytest.raises(RecipeError, match=rf'recipe {re.escape(str(f))}: the YAML expands to more than '
                                                       r'100,000 values once its aliases'):
        load_recipe(f)
    flow = '{' + _BOMB.strip().replace('\n', ', ') + '}'
    with _within(20), pytest.raises(RecipeError, match='override .*the YAML expands to more than 100,000 values'):
        load_recipe(None, [f'model_args.x={flow}'], **SYN)
    with pytest.raises(RecipeError, match='a YAML alias refers to a value that contains it'):
        load_recipe(None, ['model_args.x=&a [1, *a]'], **SYN)
    ok = load_recipe(None, ['model_args.x={a: &a [1, 2], b: *a}'], **SYN)   # a plain alias is fine
    assert ok.model_args['x'] == {'a': [1, 2], 'b': [1, 2]}


@pytest.mark.parametrize('overrides, match', [
    (['warmup_epochs=1e300'], r'warmup_epochs 1e\+300 is longer than the run \(epochs 10, from the defaults\)'),
    (['epochs=3', 'warmup_epochs=3.5'], r'warmup_epochs 3.5 is longer than the run \(epochs 3, from override '
                                        r"'epochs=3'\).*Fix: warmup_epochs of at most 3"),
])
def test_a_warm_up_longer_than_the_run_is_refused(overrides, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(None, overrides, **SYN)
    assert load_recipe(None, ['epochs=3', 'warmup_epochs=3'], **SYN).warmup_epochs == 3
