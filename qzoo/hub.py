"""Weights I/O: safetensors + config.json (timm's hub format) + model card, on
huggingface_hub; published checkpoints with SHA-256 checks.

Weight specs understood by :func:`from_pretrained` (and ``eval/validate.py``):

* a folder holding ``model.safetensors`` + ``config.json`` (what :func:`save_pretrained` writes);
* a ``.safetensors`` file (its metadata names the architecture and model args);
* ``hf-hub:org/name[@revision]`` (``hf_hub_download``; offline from the HF cache with
  ``HF_HUB_OFFLINE=1``);
* an ``https://`` URL of a ``.safetensors`` file (cached in torch's hub cache);
* a published qzoo name such as ``qresnet20.cifar10-jpeg75`` (``checkpoints/`` in this
  repository, else its ``hf_hub_id``).

Every load checks the weights' SHA-256 when one is known (manifest, config.json or a
``-<hex>`` suffix in the file name) and never unpickles anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .errors import CheckpointError

__all__ = [
    'CheckpointError', 'save_pretrained', 'save_weights', 'push_to_hub', 'from_pretrained', 'load_with_info', 'load_weights', 'sha256_file',
    'published', 'CHECKPOINTS_DIR', 'WEIGHTS_NAME', 'CONFIG_NAME',
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS_DIR = REPO_ROOT / 'checkpoints'
MANIFEST = CHECKPOINTS_DIR / 'manifest.json'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
HF_ORG = 'qzoo'


# ---- hashing & manifest ---------------------------------------------------------------
def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def published() -> Dict[str, Dict[str, Any]]:
    """The manifest of published checkpoints: ``{'<arch>.<tag>': entry}`` where an entry has
    ``architecture``, ``tag``, ``model_args``, ``folder`` (under ``checkpoints/``), ``sha256``,
    ``hf_hub_id``, ``dataset`` and the headline metrics."""
    if not MANIFEST.exists():
        return {}
    with open(MANIFEST) as f:
        return json.load(f)


# ---- loading ----------------------------------------------------------------------------
def _check_sha(path: Path, expected: Optional[str], fix: str) -> None:
    if not expected:
        return
    found = sha256_file(path)
    if not found.startswith(expected.lower()):
        raise CheckpointError(
            f'checksum mismatch for {path}: expected SHA-256 {expected}, found {found} '
            f'({path.stat().st_size} bytes; the file is corrupt, truncated or a different checkpoint). Fix: {fix}')


def load_weights(path: Union[str, Path], expected_sha256: Optional[str] = None,
                 fix: str = 'delete the file and download it again') -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a ``.safetensors`` file after checking its SHA-256; returns (state_dict, metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} does not exist. Fix: {fix}')
    if path.suffix != '.safetensors':
        raise CheckpointError(f'{path} is not a .safetensors file: qzoo loads its own weights only as '
                              f'safetensors (it never unpickles). Fix: convert it with save_pretrained')
    _check_sha(path, expected_sha256, fix)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = dict(f.metadata() or {})
        sd = load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'cannot read {path} as safetensors ({e}); the file is corrupt or truncated '
                              f'({path.stat().st_size} bytes). Fix: {fix}') from None
    return sd, meta


def _hf_download(repo: str, filename: str, cache_dir=None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    repo_id, _, revision = repo.partition('@')
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f'{filename} of hf-hub:{repo} is not in the Hugging Face cache and the hub cannot be reached '
            f'({type(e).__name__}). Fix: connect once (or unset HF_HUB_OFFLINE) to download it, or copy the '
            f'repository into the cache at $HF_HUB_CACHE (now {os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")}), '
            f'or load a local folder with from_pretrained("/path/to/folder")') from None


def _read_config(folder: Path) -> Dict[str, Any]:
    cfg = folder / CONFIG_NAME
    if not cfg.is_file():
        raise CheckpointError(f'{folder} has no {CONFIG_NAME}. Fix: point at a folder written by '
                              f'qzoo.hub.save_pretrained (model.safetensors + config.json)')
    with open(cfg) as f:
        return json.load(f)


def _manifest_entry(name: str) -> Dict[str, Any]:
    entries = published()
    if name not in entries:
        raise CheckpointError(f'no published qzoo checkpoint named {name!r}; published: '
                              f'{", ".join(sorted(entries)) or "none yet"}')
    return entries[name]


def resolve_published(name: str, cache_dir=None) -> Tuple[Path, Dict[str, Any]]:
    """Local file of published checkpoint ``name`` (``checkpoints/`` first, else its
    ``hf_hub_id``), SHA-256 checked, and its manifest entry."""
    entry = _manifest_entry(name)
    local = CHECKPOINTS_DIR / entry['folder'] / WEIGHTS_NAME
    if local.is_file():
        rel = local.relative_to(REPO_ROOT) if local.is_relative_to(REPO_ROOT) else local
        fix = f'restore it from git (git checkout -- {rel}) or download hf-hub:{entry["hf_hub_id"]}'
        _check_sha(local, entry['sha256'], fix)
        return local, entry
    if not entry.get('hf_hub_id'):
        raise CheckpointError(f'{local} is missing and {name} has no hf_hub_id. Fix: restore checkpoints/ from git')
    path = _hf_download(entry['hf_hub_id'], WEIGHTS_NAME, cache_dir)
    _check_sha(path, entry['sha256'], f'delete {path} (HF cache) and download again')
    return path, entry


def _url_to_file(url: str) -> Path:
    from urllib.error import URLError
    hub_dir = Path(torch.hub.get_dir()) / 'checkpoints'
    dest = hub_dir / os.path.basename(url.split('?')[0])
    if not dest.exists():
        hub_dir.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dest), progress=False)
        except (URLError, OSError) as e:
            raise CheckpointError(f'cannot download {url} ({e}) and {dest} is not cached. Fix: download it '
                                  f'yourself to {dest} (the torch hub cache; set TORCH_HOME to move it)') from None
    return dest


_HASH_SUFFIX = re.compile(r'-([0-9a-f]{8,64})$')


def _expected_from_name(path: Path) -> Optional[str]:
    """The SHA-256 prefix in a torch.hub-style file name (``name-<hex>.ext``), if any."""
    m = _HASH_SUFFIX.search(path.name[:-len(path.suffix)] if path.suffix else path.name)
    return m.group(1) if m else None


def resolve_spec(spec: Union[str, Path], cache_dir=None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Weights and description of any weight spec (see module doc). Returns
    ``(state_dict, info)`` with ``info`` = architecture, model_args, file, sha256, source."""
    spec_s = str(spec)
    if spec_s.startswith('hf-hub:'):
        repo = spec_s[len('hf-hub:'):]
        folder_cfg = _hf_download(repo, CONFIG_NAME, cache_dir)
        with open(folder_cfg) as f:
            config = json.load(f)
        path = _hf_download(repo, WEIGHTS_NAME, cache_dir)
        expected = config.get('qzoo', {}).get('sha256')
        sd, meta = load_weights(path, expected, f'delete {path} from the HF cache and download again')
        return sd, _info(config, meta, path, 'hf-hub:' + repo)
    if spec_s.startswith(('http://', 'https://', 'file://')):
        path = _url_to_file(spec_s)
        sd, meta = load_weights(path, _expected_from_name(path), f'delete {path} and download again')
        return sd, _info(None, meta, path, spec_s)
    path = Path(spec_s).expanduser()
    if path.is_dir():
        config = _read_config(path)
        expected = config.get('qzoo', {}).get('sha256')
        sd, meta = load_weights(path / WEIGHTS_NAME, expected,
                                'rewrite the folder with qzoo.hub.save_pretrained')
        return sd, _info(config, meta, path / WEIGHTS_NAME, str(path))
    if path.suffix == '.safetensors' or path.exists():
        sd, meta = load_weights(path, _expected_from_name(path))
        return sd, _info(None, meta, path, str(path))
    if spec_s in published():
        file, entry = resolve_published(spec_s, cache_dir)
        sd, meta = load_weights(file)  # checked by resolve_published
        return sd, dict(_info(None, meta, file, spec_s), architecture=entry['architecture'],
                        model_args=entry['model_args'])
    raise CheckpointError(f'cannot resolve weights {spec_s!r}: not a folder, file, hf-hub:org/name, URL or '
                          f'published name (published: {", ".join(sorted(published())) or "none"})')


def _info(config, meta, path: Path, source: str) -> Dict[str, Any]:
    if config is not None:
        arch = config.get('architecture')
        args = config.get('model_args', {})
    else:
        arch = meta.get('architecture')
        args = json.loads(meta.get('model_args', '{}'))
    if not arch:
        raise CheckpointError(f'{path} does not say which architecture it holds (no config.json and no '
                              f'"architecture" in its safetensors metadata). Fix: save it with '
                              f'qzoo.hub.save_pretrained, or load the state dict yourself into the right model')
    return dict(architecture=arch, model_args=args, file=str(path), sha256=sha256_file(path), source=source,
                metadata=meta)


def _load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], file: str, arch: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}'
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ', '.join(xs[:4]) + (f' (+{len(xs) - 4} more)' if len(xs) > 4 else '')
        raise CheckpointError(
            f'the weights in {file} do not fit {arch}: ' +
            '; '.join(p for p in [f'missing {len(missing)} keys: {few(missing)}' if missing else '',
                                  f'unexpected {len(unexpected)} keys: {few(unexpected)}' if unexpected else '',
                                  f'shape mismatches: {few(shapes)}' if shapes else ''] if p) +
            '. Fix: create the architecture and arguments the checkpoint was saved with (see its config.json: '
            'architecture, model_args, num_classes), or pass num_classes/in_chans to let timm adapt the head/stem')
    model.load_state_dict(sd, strict=True)


def load_with_info(spec: Union[str, Path], cache_dir=None, **kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    """:func:`from_pretrained` that also returns the weights' description (architecture,
    model_args, file, sha256, source, metadata)."""
    from .registry import create_model
    sd, info = resolve_spec(spec, cache_dir)
    args = {k: v for k, v in info['model_args'].items() if k not in ('pretrained_cfg', 'pretrained_cfg_overlay')}
    args.update(kwargs)
    try:
        model = create_model(info['architecture'], **args)
    except ValueError as e:
        raise CheckpointError(f'{info["file"]} names architecture {info["architecture"]!r}: {e}') from None
    _load_into(model, sd, info['file'], info['architecture'])
    model.pretrained_cfg = dict(model.pretrained_cfg, source=info['source'], file=info['file'])
    model.eval()
    return model, info


def from_pretrained(spec: Union[str, Path], cache_dir=None, **kwargs) -> nn.Module:
    """Build the model described by a weight spec and load its weights (strictly, after the
    SHA-256 check), in eval mode. ``kwargs`` override the saved model args."""
    return load_with_info(spec, cache_dir, **kwargs)[0]


# ---- pretrained=True through timm -------------------------------------------------------
def pretrained_weights(variant: str, pretrained_cfg=None, overlay=None, cache_dir=None):
    """Resolve and verify the weights for ``pretrained=True``. Returns ``(state_dict, file)``.
    (The checkpoint's architecture arguments are applied by the model factory.)"""
    from timm.models import resolve_pretrained_cfg
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay).to_dict()
    source = cfg.get('source')
    if source == 'local-dir':           # timm.create_model('local-dir:/path')
        sd, info = resolve_spec(cfg['file'], cache_dir)
        return sd, info['file']
    if source == 'hf-hub':              # timm.create_model('hf-hub:org/name')
        sd, info = resolve_spec('hf-hub:' + cfg['hf_hub_id'], cache_dir)
        return sd, info['file']
    name = f"{cfg.get('architecture') or variant}.{cfg['tag']}" if cfg.get('tag') else None
    if name is None or name not in published():
        avail = [n for n in published() if n.split('.')[0] == variant]
        raise CheckpointError(
            f'no published weights for {variant!r}' + (f' with tag {cfg.get("tag")!r}' if cfg.get('tag') else '') +
            (f'; available: {", ".join(avail)}' if avail else '; none are published for this architecture yet') +
            '. Fix: use pretrained=False, a published name (qzoo.list_models(pretrained=True)), '
            'or qzoo.hub.from_pretrained(<folder|file|hf-hub:...|url>)')
    file, _ = resolve_published(name, cache_dir)
    sd, _ = load_weights(file)
    return sd, str(file)


def build_pretrained(builder, variant: str, kwargs: Dict[str, Any]) -> nn.Module:
    """Called by the model builder for ``pretrained=True``: load verified weights, then let
    timm adapt them (num_classes / in_chans) and load them."""
    sd, file = pretrained_weights(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'),
                                  kwargs.get('cache_dir'))
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, state_dict=sd,
                                            source='qzoo')
    try:
        model = builder(**kwargs)
    except RuntimeError as e:
        if 'Error(s) in loading state_dict' not in str(e):
            raise
        raise CheckpointError(f'the weights in {file} do not fit {variant} with arguments '
                              f'{ {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg_overlay",)} }: '
                              f'{str(e).splitlines()[1:3]}. Fix: use the checkpoint\'s architecture and arguments '
                              f'(its config.json), or change num_classes/in_chans only') from None
    model.pretrained_cfg.pop('state_dict', None)
    model.pretrained_cfg['file'] = file
    return model


# ---- saving -------------------------------------------------------------------------------
def save_weights(state_dict: Mapping[str, torch.Tensor], path: Union[str, Path],
                 metadata: Optional[Dict[str, str]] = None, dtype: Optional[torch.dtype] = None) -> str:
    """Write a state dict as safetensors atomically (temp file + rename); returns its SHA-256."""
    from safetensors.torch import save_file
    path = Path(path)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in state_dict.items()}
    tmp = path.with_name(path.name + '.tmp')
    try:
        save_file(sd, str(tmp), metadata=dict(metadata or {'format': 'pt'}))
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return sha256_file(path)


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def save_pretrained(model: nn.Module, directory: Union[str, Path], *, results: Optional[Dict[str, Any]] = None,
                    dtype: Optional[torch.dtype] = None, card: bool = True, name: Optional[str] = None) -> Path:
    """Write ``model.safetensors`` (metadata: architecture, neuron, params, model_args),
    ``config.json`` (timm's hub format plus a ``qzoo`` block with the weights' SHA-256 and
    ``results``) and, with ``card``, a model-card ``README.md``. Returns the folder.
    ``dtype=torch.float16`` stores floating tensors in half precision; ``name`` titles the card
    (default: the architecture)."""
    from timm.models._hub import save_config_for_hf
    from .measure import count_params
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = model.pretrained_cfg.get('architecture')
    if not arch:
        raise ValueError('model has no pretrained_cfg architecture: build it with qzoo.create_model')
    from .models._common import RUNTIME_KWARGS
    model_args = {k: _jsonable(v) for k, v in getattr(model, '_model_args', {}).items() if k not in RUNTIME_KWARGS}
    for k in ('num_classes', 'in_chans'):  # explicit, so every timm version rebuilds the same head and stem
        if isinstance(getattr(model, k, None), int):
            model_args[k] = getattr(model, k)
    meta = dict(format='pt', architecture=arch, neuron=str(getattr(model, 'neuron', 'linear')),
                params=str(count_params(model)), model_args=json.dumps(model_args, sort_keys=True),
                dtype=str(dtype).replace('torch.', '') if dtype else 'as trained')
    sha = save_weights(model.state_dict(), directory / WEIGHTS_NAME, meta, dtype)
    qz = dict(sha256=sha, neuron=meta['neuron'], params=int(meta['params']), weights_dtype=meta['dtype'])
    if results:
        qz['results'] = results
    model._model_args = model_args
    save_config_for_hf(model, directory / CONFIG_NAME, model_config={'qzoo': qz},  # a Path: older timm needs one
                       model_args=model_args)
    if card:
        from .cards import model_card
        (directory / 'README.md').write_text(model_card(json.loads((directory / CONFIG_NAME).read_text()), name))
    return directory


def push_to_hub(model: nn.Module, repo_id: str, *, results=None, dtype=None, private: bool = False,
                token=None, commit_message: str = 'Upload qzoo checkpoint') -> str:
    """Save with :func:`save_pretrained` into a temporary folder and upload it with
    huggingface_hub's ``HfApi.upload_folder``. Returns the commit URL."""
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, results=results, dtype=dtype)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(info, 'commit_url', info))
