"""The training engine behind ``recipes/train.py``: one loop for every zoo model.

A run reads a YAML recipe (plus ``key=value`` overrides), trains with ReLinear
parameter groups, selects the published weights on the *validation* split (or
takes the last epoch), evaluates the test split once, and writes a folder ready
to publish::

    model.safetensors  config.json  README.md   (qzoo.hub.save_pretrained)
    results.json       recipe.yaml  log.jsonl   last.ckpt (resume state)

Exactness: data order and augmentation depend only on (seed, epoch), the
global RNG state is checkpointed, so 2 epochs straight == 1 + ``--resume`` + 1
(same weights). Checkpoints are written atomically; a non-finite loss stops
the run and leaves the last good checkpoint in place.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from . import __version__
from .measure import count_macs, count_params
from .errors import CheckpointWriteError, RecipeError, TrainingDiverged
from .relinear import param_groups

__all__ = ['DEFAULTS', 'load_recipe', 'train', 'TrainingDiverged', 'CheckpointWriteError', 'RecipeError', 'evaluate', 'Metrics']

DEFAULTS: Dict[str, Any] = dict(
    name=None,                 # run name; default <model>-<data>
    model=None,                # qzoo model name
    model_args={},             # kwargs for qzoo.create_model
    data=None,                 # dataset name (qzoo.data)
    data_args={},              # kwargs for qzoo.data.load_dataset
    epochs=10,
    batch_size=128,            # global batch (split across DDP ranks)
    eval_batch_size=1024,
    optimizer='sgd',           # sgd | adamw
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    betas=[0.9, 0.999],
    weight_decay=5.0e-4,
    quad_lr_scale=1.0,         # ReLinear: lr scale of quadratic-only terms
    quad_weight_decay=None,    # ReLinear: their weight decay (default weight_decay)
    schedule='cosine',         # cosine | constant
    warmup_epochs=0.0,
    min_lr_ratio=0.0,
    label_smoothing=0.0,
    grad_clip=None,            # max grad norm
    select='best_val',         # best_val | last: which weights are published
    amp='auto',                # auto (bf16 on CUDA) | bf16 | off
    channels_last='auto',
    compile=False,
    seed=0,
    deterministic=False,
    device='auto',
    nan_check_every=50,        # steps between (synchronising) non-finite loss checks
    fault={},                  # fault injection for tests, not part of the recipe: nan_at_step, stop_after_epoch,
                               # pause_at_step (sleep there, for kill -9 tests), fail_save_at_epoch (disk full)
    smoke={'train': 64, 'val': 32, 'test': 32, 'epochs': 1, 'batch_size': 16},
)


# ---- recipes --------------------------------------------------------------------------------
def _parse_override(item: str):
    if '=' not in item:
        raise RecipeError(f'override {item!r} must be key=value (dotted keys for nested values, e.g. model_args.width=8)')
    key, value = item.split('=', 1)
    return key.strip(), yaml.safe_load(value)


def _set_dotted(cfg: Dict, key: str, value) -> None:
    parts = key.split('.')
    if parts[0] not in DEFAULTS:
        raise RecipeError(f'unknown recipe key {parts[0]!r}; valid keys: {", ".join(DEFAULTS)}')
    d = cfg
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise RecipeError(f'cannot set {key}: {p} is not a mapping')
    d[parts[-1]] = value


def _read_yaml(path: Path) -> Dict:
    if not path.is_file():
        raise RecipeError(f'recipe {path} not found (recipes live in recipes/<task>/<model>.yaml)')
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise RecipeError(f'recipe {path} must be a YAML mapping')
    base = data.pop('base', None)
    if base:
        parent = _read_yaml((path.parent / base).resolve())
        for k, v in data.items():
            if isinstance(v, dict) and isinstance(parent.get(k), dict):
                parent[k] = {**parent[k], **v}
            else:
                parent[k] = v
        data = parent
    return data


_INT_KEYS = ('epochs', 'batch_size', 'eval_batch_size', 'seed', 'nan_check_every')
_FLOAT_KEYS = ('lr', 'momentum', 'weight_decay', 'quad_lr_scale', 'quad_weight_decay', 'warmup_epochs', 'min_lr_ratio',
               'label_smoothing', 'grad_clip')
_NULLABLE = ('quad_weight_decay', 'grad_clip')


def _number(key: str, v):
    """A numeric recipe value; YAML reads '1e-4' (no dot) as a string, so numeric strings are converted."""
    if v is None and key in _NULLABLE:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise RecipeError(f'{key} must be a number, got {v!r}')
    if key in _INT_KEYS:
        if v != int(v):
            raise RecipeError(f'{key} must be a whole number, got {v!r}')
        return int(v)
    return v


def load_recipe(path=None, overrides: Sequence[str] = (), **values) -> Dict[str, Any]:
    """Defaults <- YAML file (with ``base:`` inheritance) <- ``values`` <- ``key=value`` overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    layers = [_read_yaml(Path(path))] if path else []
    layers.append(values)
    for layer in layers:
        for k, v in layer.items():
            if k not in DEFAULTS:
                raise RecipeError(f'unknown recipe key {k!r}; valid keys: {", ".join(DEFAULTS)}')
            cfg[k] = ({**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg[k], dict) and k != 'model_args'
                      else v)
    for item in overrides:
        _set_dotted(cfg, *_parse_override(item))
    for key in ('model', 'data'):
        if not cfg[key]:
            raise RecipeError(f'recipe needs {key!r}')
    for key in _INT_KEYS + _FLOAT_KEYS:
        cfg[key] = _number(key, cfg[key])
    if cfg['select'] not in ('best_val', 'last'):
        raise RecipeError(f"select must be 'best_val' or 'last', got {cfg['select']!r}")
    if cfg['optimizer'] not in ('sgd', 'adamw'):
        raise RecipeError(f"optimizer must be 'sgd' or 'adamw', got {cfg['optimizer']!r}")
    if cfg['schedule'] not in ('cosine', 'constant'):
        raise RecipeError(f"schedule must be 'cosine' or 'constant', got {cfg['schedule']!r}")
    cfg['name'] = cfg['name'] or f"{cfg['model']}-{cfg['data']}"
    return cfg


def recipe_text(cfg: Dict[str, Any]) -> str:
    """The resolved recipe as YAML (fault-injection hooks left out)."""
    return yaml.safe_dump({k: v for k, v in cfg.items() if k != 'fault'}, sort_keys=True)


# ---- metrics --------------------------------------------------------------------------------
class Metrics:
    """Accumulates a task's metrics over batches (on the device; one sync at the end)."""

    PRIMARY = {'classification': ('top1', True), 'segmentation': ('iou', True), 'regression': ('mse', False)}

    def __init__(self, task: str, num_classes: int, device):
        self.task, self.num_classes = task, num_classes
        self.nonfinite = torch.zeros((), dtype=torch.long, device=device)
        if task == 'classification':
            self.conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
            self.top5 = torch.zeros((), dtype=torch.long, device=device)
        else:
            self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        out = out.float()
        self.nonfinite += (~torch.isfinite(out)).flatten(1).any(1).sum()
        if self.task == 'classification':
            pred = out.argmax(1)
            self.conf += torch.bincount(y * self.num_classes + pred, minlength=self.num_classes ** 2
                                        ).view(self.num_classes, self.num_classes)
            if self.num_classes > 5:
                self.top5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum()
        elif self.task == 'segmentation':
            pred = (out > 0) if out.shape[1] == 1 else out.argmax(1, keepdim=True).bool()
            t = y.bool()
            inter = (pred & t).flatten(1).sum(1).double()
            union = (pred | t).flatten(1).sum(1).double()
            size = (pred.flatten(1).sum(1) + t.flatten(1).sum(1)).double()
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            dice = torch.where(size > 0, 2 * inter / size.clamp(min=1), torch.ones_like(size))
            self.sums += torch.stack([iou.sum(), dice.sum(), torch.tensor(float(len(iou)), device=iou.device,
                                                                          dtype=torch.float64)])
        else:
            err = (out.view(len(out), -1) - y.view(len(y), -1).float()).pow(2).mean(1).double()
            self.sums += torch.stack([err.sum(), torch.zeros((), device=err.device, dtype=torch.float64),
                                      torch.tensor(float(len(err)), device=err.device, dtype=torch.float64)])

    def compute(self) -> Dict[str, float]:
        """The task's metrics; ``nonfinite`` (samples with a NaN/inf output) is added when not zero."""
        res = self._compute()
        bad = int(self.nonfinite.item())
        if bad:
            res['nonfinite'] = bad
        return res

    def _compute(self) -> Dict[str, float]:
        if self.task == 'classification':
            c = self.conf.double().cpu()
            tp = c.diag()
            acc = (tp.sum() / c.sum().clamp(min=1)).item()
            prec = tp / c.sum(0).clamp(min=1)
            rec = tp / c.sum(1).clamp(min=1)
            f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-12), torch.zeros_like(tp))
            present = c.sum(1) > 0
            res = {'top1': 100 * acc, 'macro_f1': 100 * f1[present].mean().item() if present.any() else 0.0}
            if self.num_classes > 5:
                res['top5'] = 100 * self.top5.item() / max(1, c.sum().item())
            return res
        s = self.sums.cpu()
        n = max(s[2].item(), 1)
        if self.task == 'segmentation':
            return {'iou': 100 * s[0].item() / n, 'dice': 100 * s[1].item() / n}
        return {'mse': s[0].item() / n}

    @classmethod
    def primary(cls, task: str):
        return cls.PRIMARY[task]


def _loss_fn(task: str, label_smoothing: float):
    if task == 'classification':
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if task == 'segmentation':
        def seg(out, y):
            if out.shape[1] == 1:
                return F.binary_cross_entropy_with_logits(out, y.to(out.dtype))
            return F.cross_entropy(out, y.squeeze(1).long())
        return seg
    return lambda out, y: F.mse_loss(out.view(len(out), -1), y.view(len(y), -1).to(out.dtype))


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: str, num_classes: int, device, amp_dtype=None) -> Dict[str, float]:
    """Metrics of ``model`` over ``loader``."""
    was = model.training
    model.eval()
    m = Metrics(task, num_classes, device)
    for x, y in loader:
        with _autocast(device, amp_dtype):
            out = model(x)
        m.update(out, y)
    model.train(was)
    return m.compute()


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# ---- distributed & device ----------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device_pref: str) -> Dist:
    ws = int(os.environ.get('WORLD_SIZE', '1'))
    if ws <= 1:
        return Dist()
    rank, local = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() and device_pref in ('auto', 'cuda')
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group('nccl' if use_cuda else 'gloo')
    return Dist(rank, ws, local)


def _device(pref: str, dist: Dist) -> torch.device:
    if pref == 'auto':
        return torch.device(f'cuda:{dist.local_rank}' if torch.cuda.is_available() else 'cpu')
    return torch.device(pref)


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


# ---- checkpoints ---------------------------------------------------------------------------
def _atomic_save(obj, path: Path, fail: bool = False) -> None:
    """Write to a temp file, fsync, then rename over ``path``: a crash or a failed write
    (disk full, permissions) leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + '.tmp')
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            if fail:  # fault injection: the disk fills up after a partial write
                raise OSError(28, 'No space left on device (injected)', str(tmp))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _rng_state(device) -> Dict[str, torch.Tensor]:
    s = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        s['cuda'] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s, device) -> None:
    torch.set_rng_state(s['cpu'])
    if device.type == 'cuda' and 'cuda' in s:
        torch.cuda.set_rng_state(s['cuda'], device)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, '_orig_mod', model)
    return getattr(model, 'module', model)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the loop -----------------------------------------------------------------------------
def _lr_lambda(cfg, steps_per_epoch: int):
    total = max(1, cfg['epochs'] * steps_per_epoch)
    warm = int(round(cfg['warmup_epochs'] * steps_per_epoch))
    floor = cfg['min_lr_ratio']

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg['schedule'] == 'constant':
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def _smoke_slice(split, n: int):
    """A seeded random subset of ``n`` samples (splits may be stored sorted by class)."""
    if split is None or n is None:
        return split
    idx = torch.randperm(len(split.x), generator=torch.Generator().manual_seed(0))[:n]
    return type(split)(split.x[idx], split.y[idx])


def train(cfg: Dict[str, Any], out_dir, resume: bool = False, smoke: bool = False,
          recipe_path: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run recipe ``cfg`` into ``out_dir``; returns the results dict (also results.json)."""
    import qzoo
    from qzoo.data import BatchLoader, load_dataset
    from qzoo.hub import load_weights, save_pretrained, save_weights

    cfg = copy.deepcopy(cfg)
    if smoke:
        sm = cfg['smoke']
        cfg.update(epochs=sm.get('epochs', 1), batch_size=min(cfg['batch_size'], sm.get('batch_size', 16)),
                   eval_batch_size=min(cfg['eval_batch_size'], 64), device='cpu', compile=False, amp='off')
    out = Path(out_dir)
    dist = _setup_dist(cfg['device'])
    device = _device(cfg['device'], dist)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    text = recipe_text(cfg)
    sha = _sha256(text)
    amp_dtype = torch.bfloat16 if (cfg['amp'] == 'bf16' or (cfg['amp'] == 'auto' and device.type == 'cuda')) else None
    if cfg['deterministic']:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg['seed'])

    # data
    ds = load_dataset(cfg['data'], **cfg['data_args'])
    if smoke:
        ds.train, ds.val, ds.test = (_smoke_slice(ds.train, sm.get('train')), _smoke_slice(ds.val, sm.get('val')),
                                     _smoke_slice(ds.test, sm.get('test')))
    per_rank = max(1, cfg['batch_size'] // dist.world_size)
    train_loader = BatchLoader(ds.train, per_rank, shuffle=True, seed=cfg['seed'], device=device,
                               augment=ds.augment, normalize=ds.normalize,
                               drop_last=len(ds.train.x) >= cfg['batch_size'], rank=dist.rank,
                               world_size=dist.world_size)
    eval_kw = dict(shuffle=False, device=device, normalize=ds.normalize)  # every rank sees the whole split
    val_loader = BatchLoader(ds.val, cfg['eval_batch_size'], **eval_kw)
    test_loader = BatchLoader(ds.test, cfg['eval_batch_size'], **eval_kw)

    # model & optimiser
    model = qzoo.create_model(cfg['model'], num_classes=ds.num_classes, in_chans=ds.in_shape[0], **cfg['model_args'])
    params, sample_shape = count_params(model), (1, *ds.in_shape)
    macs = count_macs(model, sample_shape)
    model.to(device)
    cl = cfg['channels_last'] == True or (cfg['channels_last'] == 'auto' and device.type == 'cuda'
                                          and len(ds.in_shape) == 3)
    if cl:
        model.to(memory_format=torch.channels_last)
    groups = param_groups(model, cfg['lr'], cfg['weight_decay'], cfg['quad_lr_scale'], cfg['quad_weight_decay'])
    if cfg['optimizer'] == 'sgd':
        opt = torch.optim.SGD(groups, lr=cfg['lr'], momentum=cfg['momentum'], nesterov=cfg['nesterov'])
    else:
        opt = torch.optim.AdamW(groups, lr=cfg['lr'], betas=tuple(cfg['betas']))
    steps_per_epoch = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))
    net = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    if cfg['compile']:
        net = torch.compile(net)
    loss_fn = _loss_fn(ds.task, cfg['label_smoothing'])
    primary, higher = Metrics.primary(ds.task)

    # state / resume
    ckpt_path, best_path = out / 'last.ckpt', out / 'best.safetensors'
    start_epoch, best, best_epoch, wall_before = 0, None, None, 0.0
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f'--resume: no checkpoint at {ckpt_path}; start without --resume')
        state = torch.load(ckpt_path, map_location='cpu', weights_only=True)
        if state['recipe_sha256'] != sha:
            raise RecipeError(f'--resume: {ckpt_path} was written by a different recipe (sha256 '
                              f'{state["recipe_sha256"][:12]} vs {sha[:12]}); resume with the same recipe and overrides')
        model.load_state_dict(state['model'])
        opt.load_state_dict(state['optimizer'])
        sched.load_state_dict(state['scheduler'])
        start_epoch, best, best_epoch = state['epoch'] + 1, state['best'], state['best_epoch']
        wall_before = state['wall_time_s']
        _set_rng_state(state['rng'], device)
    elif dist.main:
        (out / 'log.jsonl').write_text('')

    def log(rec):
        if dist.main:
            with open(out / 'log.jsonl', 'a') as f:
                f.write(json.dumps(rec) + '\n')

    bar = None
    if progress and dist.main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg['epochs'], initial=start_epoch, desc=cfg['name'], unit='epoch', leave=False)
    fault = cfg.get('fault') or {}
    fault_step = fault.get('nan_at_step')
    t_start = time.time()
    global_step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg['epochs']):
        net.train()
        train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        n_seen = 0
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.time()
        for i, (x, y) in enumerate(train_loader):
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                outp = net(x)
                loss = loss_fn(outp, y)
            if fault_step is not None and global_step == fault_step:
                loss = loss * float('nan')
            if fault.get('pause_at_step') == global_step and dist.main:
                (out / 'paused').write_text(str(global_step))
                time.sleep(600)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg['grad_clip']:
                nn.utils.clip_grad_norm_(model.parameters(), cfg['grad_clip'])
            opt.step()
            sched.step()
            loss_sum += loss.detach().float()
            n_seen += len(x)
            global_step += 1
            last = i + 1 == steps_per_epoch
            if last or global_step % cfg['nan_check_every'] == 0:
                bad = (~torch.isfinite(loss_sum)).float()
                if dist.world_size > 1:
                    torch.distributed.all_reduce(bad)
                if bad.item() > 0:
                    good = (f'the last good checkpoint {ckpt_path} (end of epoch {epoch - 1}) is kept'
                            if ckpt_path.exists() else 'no checkpoint had been written yet')
                    raise TrainingDiverged(
                        f'{cfg["name"]}: non-finite training loss in epoch {epoch} (by step {global_step}); stopped. '
                        f'{good}. Fix: lower lr or quad_lr_scale, set grad_clip, or check the data; then --resume '
                        f'continues from the last good epoch')
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        train_time = time.time() - t0
        val = evaluate(model, val_loader, ds.task, ds.num_classes, device, amp_dtype)
        score = val[primary]
        if val.get('nonfinite'):  # NaN/inf outputs: never select this epoch
            score = -math.inf if higher else math.inf
        improved = best is None or (score > best if higher else score < best)
        if improved:
            best, best_epoch = score, epoch
            if dist.main and cfg['select'] == 'best_val':
                save_weights(model.state_dict(), best_path)
        rec = dict(epoch=epoch, train_loss=(loss_sum / max(1, steps_per_epoch)).item(),
                   **{f'val_{k}': v for k, v in val.items()}, lr=opt.param_groups[0]['lr'],
                   img_s=n_seen * dist.world_size / max(train_time, 1e-9), epoch_time_s=train_time,
                   time=time.time())  # wall clock at the end of the epoch (launch.py --fit-in reads it)
        log(rec)
        if dist.main:
            try:
                _atomic_save(dict(model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                  epoch=epoch, best=best, best_epoch=best_epoch, rng=_rng_state(device),
                                  recipe_sha256=sha, wall_time_s=wall_before + time.time() - t_start), ckpt_path,
                             fail=fault.get('fail_save_at_epoch') == epoch)
            except OSError as e:
                raise CheckpointWriteError(
                    f'{cfg["name"]}: could not write the epoch-{epoch} checkpoint {ckpt_path} ({e}); '
                    + (f'the previous checkpoint (epoch {epoch - 1}) is intact' if ckpt_path.exists() else
                       'no earlier checkpoint exists') + '. Fix: free disk space / fix permissions, then --resume') from e
        if bar is not None:
            bar.set_postfix({primary: f'{score:.3f}', 'loss': f"{rec['train_loss']:.3f}"})
            bar.update(1)
        if fault.get('stop_after_epoch') == epoch:  # simulated interruption (tests)
            if bar is not None:
                bar.close()
            return {'interrupted_after_epoch': epoch}
    if bar is not None:
        bar.close()
    wall = wall_before + time.time() - t_start

    # selection and the one test evaluation (rank 0 only)
    if dist.world_size > 1:
        torch.distributed.barrier()
        if not dist.main:
            return {}
    selected_epoch = cfg['epochs'] - 1
    if cfg['select'] == 'best_val' and best_path.exists():
        sd, _ = load_weights(best_path)
        model.load_state_dict(sd)
        selected_epoch = best_epoch
    val = evaluate(model, val_loader, ds.task, ds.num_classes, device, amp_dtype)
    test = evaluate(model, test_loader, ds.task, ds.num_classes, device, amp_dtype)
    results = dict(
        model=cfg['model'], model_args=cfg['model_args'], dataset=ds.name, task=ds.task,
        data_spec=dict(name=cfg['data'], args=cfg['data_args']),
        neuron=getattr(model, 'neuron', 'linear'), params=params, macs=macs, macs_input=list(sample_shape),
        val=val, test=test, primary_metric=primary, epochs=cfg['epochs'], selected_epoch=selected_epoch,
        selection=('best validation ' + primary) if cfg['select'] == 'best_val' else 'last epoch',
        seed=cfg['seed'], wall_time_s=wall, device=_device_name(device), world_size=dist.world_size,
        torch=torch.__version__, qzoo=__version__, recipe=recipe_path or '', recipe_sha256=sha,
        data=dict(splits={k: len(getattr(ds, k).x) for k in ('train', 'val', 'test')}), smoke=smoke,
    )
    (out / 'recipe.yaml').write_text(text)
    save_pretrained(model, out, results=results)
    (out / 'results.json').write_text(json.dumps(results, indent=2))
    return results
