"""Weights at the level of models: save a model as a Hugging Face-style folder, load any
weights into the right qzoo model, push a folder to the Hugging Face Hub.

Weight specs understood by :func:`from_pretrained` (and ``eval/validate.py``):

* published weights by name, e.g. ``qcnn_w8.cwru-clean-s1`` (:mod:`qzoo.weights`);
* a folder holding ``model.safetensors`` + ``config.json`` (what :func:`save_pretrained` writes), or
  ``local-dir:FOLDER`` (timm's spelling, and the way to name a folder that has a published name; a
  published name that is also a local path is loaded as published, with a warning);
* a ``.safetensors`` file (its metadata names the architecture and model args);
* ``hf-hub:org/name[@revision]`` (``hf_hub_download``; offline from the HF cache with
  ``HF_HUB_OFFLINE=1``);
* an ``https://`` URL of a ``.safetensors`` file (cached under torch.hub's folder, keyed by the URL).

:func:`create_model` (``qzoo.create_model``) loads ``local-dir:`` and ``hf-hub:`` sources through the
same loader, so they get the same checks. Every load checks the weights' SHA-256 where one is
recorded (the manifest, a folder's ``config.json``; a URL's torch.hub-style ``-<hex>`` name with
``check_hash=True``), reads safetensors only (nothing is ever unpickled), accepts only qzoo
architectures, and checks the file's tensor names, shapes and dtypes against the architecture
*before* the model is allocated (it is first built on PyTorch's ``meta`` device).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .cards import model_card
from .errors import CheckpointError
from .fileio import atomic_write_text
from .models import RUNTIME_KWARGS
from .registry import create_model as registry_create_model
from .registry import is_model
from .fileio import sha256_file
from .serialization import (check_fits, download_url, hf_download, load_weights, read_config, read_header,
                            recorded_sha256, save_weights)
from .weights import CONFIG_NAME, WEIGHTS_NAME, all_weights

__all__ = ['CheckpointError', 'create_model', 'save_pretrained', 'push_to_hub', 'from_pretrained',
           'load_with_info', 'resolve_spec', 'model_args_of', 'write_config', 'load_weights', 'save_weights',
           'sha256_file', 'WEIGHTS_NAME', 'CONFIG_NAME']


# ---- loading ----------------------------------------------------------------------------
def _describe(config: Optional[Mapping[str, Any]], meta: Mapping[str, str], path: Path) -> Tuple[str, Dict]:
    """(architecture, model_args) from a config.json, else from the safetensors metadata."""
    if config is not None:
        arch, args = config.get('architecture'), config.get('model_args', {})
    else:
        arch = meta.get('architecture')
        try:
            args = json.loads(meta.get('model_args', '{}'))
        except ValueError:
            raise CheckpointError(f'{path}: the "model_args" in its safetensors metadata are not JSON. Fix: save '
                                  f'it with qzoo.hub.save_pretrained') from None
    if not arch:
        raise CheckpointError(f'{path} does not say which architecture it holds (no config.json and no '
                              f'"architecture" in its safetensors metadata). Fix: save it with '
                              f'qzoo.hub.save_pretrained, or load the state dict yourself into the right model')
    if not isinstance(arch, str) or ':' in arch or not is_model(arch) or '.' in arch:
        raise CheckpointError(f'{path} names architecture {arch!r}, which is not a qzoo model; qzoo builds only its '
                              f'own architectures (qzoo.list_models()). Fix: use timm.create_model for timm '
                              f'checkpoints, or correct "architecture" in config.json')
    if not isinstance(args, Mapping):
        raise CheckpointError(f'{path}: model_args must be a JSON object, got {type(args).__name__}')
    bad = sorted(k for k in args if k in RUNTIME_KWARGS or k.startswith('pretrained'))
    if bad:
        raise CheckpointError(f'{path}: model_args {bad} are loading options, not architecture arguments; qzoo '
                              f'refuses them in a checkpoint. Fix: remove them from config.json')
    return arch, dict(args)


def _published(spec: str):
    try:
        return all_weights().get(spec)
    except CheckpointError:
        return None


def _resolve_folder(path: Path, spec: str) -> Tuple[Path, Optional[str], Dict[str, Any]]:
    if not path.is_dir():
        raise CheckpointError(f'{spec!r}: {path} is not a folder. Fix: give a folder written by '
                              f'qzoo.hub.save_pretrained (model.safetensors + config.json)')
    config = read_config(path)
    arch, args = _describe(config, {}, path)
    return path / WEIGHTS_NAME, recorded_sha256(config, str(path / CONFIG_NAME)), dict(
        architecture=arch, model_args=args, source=str(path.resolve()), config=config)


def _warn_if_shadowed(spec: str) -> None:
    """Warn when published weights ``spec`` share their name with a local folder or file, which they win over."""
    local = Path(spec).expanduser()
    if local.exists():
        kind = 'folder' if local.is_dir() else 'file'
        warnings.warn(f'{spec!r} names published weights and also the local {kind} {local.resolve()}: the published '
                      f'weights are loaded (source published:{spec}). Fix: to load the local {kind}, write '
                      f'{"local-dir:" + spec if kind == "folder" else "./" + spec} or its absolute path',
                      UserWarning, stacklevel=2)  # one location: shown once per process by default


def resolve_spec(spec: Union[str, Path], cache_dir=None, check_hash: bool = False
                 ) -> Tuple[Path, Optional[str], Dict[str, Any]]:
    """``(weights file, expected SHA-256 or None, info)`` of any weight spec (see the module doc; ``local-dir:PATH``
    is the folder PATH, even where a published name is the same); ``info`` has architecture, model_args, source
    (``published:<name>``, the absolute path of a folder or file, the ``hf-hub:`` spec or the URL) and the config
    (if any). Reads no tensors (hash-checked loads from the Hugging Face cache aside)."""
    spec_s = str(spec)
    if spec_s.startswith('hf_hub:'):  # timm's other spelling
        spec_s = 'hf-hub:' + spec_s[len('hf_hub:'):]
    if spec_s.startswith('local-dir:'):
        return _resolve_folder(Path(spec_s[len('local-dir:'):]).expanduser(), spec_s)
    w = _published(spec_s)
    if w is not None:
        _warn_if_shadowed(spec_s)
        return w.file, w.sha256, dict(architecture=w.architecture, model_args=dict(w.model_args),
                                     source=f'published:{w.name}', config=None, record=w)
    if spec_s.startswith('hf-hub:'):
        repo = spec_s[len('hf-hub:'):]
        config = read_config(hf_download(repo, CONFIG_NAME, cache_dir).parent)
        file = hf_download(repo, WEIGHTS_NAME, cache_dir)
        arch, args = _describe(config, {}, file)
        return file, recorded_sha256(config, spec_s), dict(architecture=arch, model_args=args, source=spec_s,
                                                            config=config)
    if '://' in spec_s:
        file = download_url(spec_s, check_hash=check_hash)
        _, meta = read_header(file, fix=f'delete {file} and load again')
        arch, args = _describe(None, meta, file)
        return file, None, dict(architecture=arch, model_args=args, source=spec_s, config=None)
    path = Path(spec_s).expanduser()
    if path.is_dir():
        return _resolve_folder(path, spec_s)
    if path.is_file():
        _, meta = read_header(path)
        arch, args = _describe(None, meta, path)
        return path, None, dict(architecture=arch, model_args=args, source=str(path.resolve()), config=None)
    raise CheckpointError(f'cannot resolve weights {spec_s!r}: not a published name, folder, file, hf-hub:org/name, '
                          f'local-dir:FOLDER or https URL (qzoo.list_models(pretrained=True) lists the published names)')


#: the sources :func:`create_model` loads through this module (timm's prefixes; ``hf_hub:`` is timm's spelling too)
SOURCE_PREFIXES = ('local-dir:', 'hf-hub:', 'hf_hub:')


def create_model(model_name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``qzoo.create_model``: a qzoo architecture or published weights by name (``'qresnet20'``,
    ``'qcnn_w8.cwru-clean-s1'``: :func:`qzoo.registry.create_model`, timm's ``create_model`` for qzoo names), or
    a ``local-dir:FOLDER`` / ``hf-hub:org/name`` source through this module's loader, with the checks of
    :func:`from_pretrained` (qzoo architectures only, safetensors only, the recorded SHA-256, the tensors' shapes
    before anything is allocated). Without ``pretrained`` a source gives its architecture with fresh weights.
    ``kwargs`` override the saved model arguments."""
    name = str(model_name)
    if not name.startswith(SOURCE_PREFIXES):
        return registry_create_model(name, pretrained=pretrained, **kwargs)
    if pretrained:
        return from_pretrained(name, **kwargs)
    _, _, info = resolve_spec(name)
    return registry_create_model(info['architecture'], **dict(info['model_args'], **kwargs))


def _build(arch: str, args: Dict[str, Any], file: Path, **device) -> nn.Module:
    try:
        return registry_create_model(arch, **args, **device)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f'{file}: cannot build {arch} with model_args {args}: {e}') from None


def load_with_info(spec: Union[str, Path], cache_dir=None, check_hash: bool = False,
                   **kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    """:func:`from_pretrained` that also returns the weights' description (architecture,
    model_args, file, sha256, source, config)."""
    file, expected, info = resolve_spec(spec, cache_dir, check_hash)
    args = dict(info['model_args'], **kwargs)
    header, meta = read_header(file)
    with torch.device('meta'):
        probe = _build(info['architecture'], args, file)
    check_fits(probe, header, str(file), info['architecture'])  # before anything is allocated
    sd, meta = load_weights(file, expected, fix='restore or download the file again')
    model = _build(info['architecture'], args, file)
    check_fits(model, sd, str(file), info['architecture'])
    model.load_state_dict(sd, strict=True)
    model.pretrained_cfg = dict(model.pretrained_cfg, source=info['source'], file=str(file))
    if info.get('record') is not None:
        model.pretrained_cfg.update(tag=info['record'].tag, label_names=info['record'].label_names)
    info = dict(info, file=str(file), sha256=expected or sha256_file(file), metadata=meta)
    return model.eval(), info


def from_pretrained(spec: Union[str, Path], cache_dir=None, check_hash: bool = False, **kwargs) -> nn.Module:
    """Build the model a weight spec describes and load its weights (strictly, after the SHA-256
    check), in eval mode. ``kwargs`` override the saved model args."""
    return load_with_info(spec, cache_dir, check_hash, **kwargs)[0]


# ---- saving -------------------------------------------------------------------------------
def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def model_args_of(model: nn.Module) -> Dict[str, Any]:
    """The arguments that rebuild ``model`` from its architecture name (num_classes and in_chans explicit,
    so every timm version rebuilds the same head and stem)."""
    args = {k: _jsonable(v) for k, v in getattr(model, '_model_args', {}).items() if k not in RUNTIME_KWARGS}
    for k in ('num_classes', 'in_chans'):
        if isinstance(getattr(model, k, None), int):
            args[k] = getattr(model, k)
    return args


def write_config(model: nn.Module, path: Path, qzoo_block: Mapping[str, Any],
                 label_names=None) -> Dict[str, Any]:
    """Write timm's ``config.json`` for ``model`` (its pretrained_cfg as it stands) plus a ``qzoo`` block;
    atomically. Returns the written config."""
    from timm.models._hub import save_config_for_hf
    extra = {'qzoo': dict(qzoo_block)}
    if label_names:
        extra['label_names'] = list(label_names)
    fd, tmp = tempfile.mkstemp(prefix='.config.', suffix='.json', dir=path.parent)
    os.close(fd)
    try:
        save_config_for_hf(model, Path(tmp), model_config=extra, model_args=model_args_of(model))
        config = json.loads(Path(tmp).read_text())
    finally:
        os.unlink(tmp)
    atomic_write_text(path, json.dumps(config, indent=2) + '\n')
    return config


def save_pretrained(model: nn.Module, directory: Union[str, Path], *, results: Optional[Dict[str, Any]] = None,
                    dtype: Optional[torch.dtype] = None, card: bool = True, name: Optional[str] = None) -> Path:
    """Write ``model.safetensors`` (deterministic; metadata: architecture, neuron, params, model_args),
    ``config.json`` (timm's hub format plus a ``qzoo`` block with the weights' SHA-256 and ``results``)
    and, with ``card``, a model-card ``README.md``. Returns the folder. ``dtype=torch.float16`` stores
    floating tensors in half precision; ``name`` titles the card (default: the architecture)."""
    from .measure import count_params
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f'{directory} is a file; save_pretrained writes a folder. Fix: choose another path')
    directory.mkdir(parents=True, exist_ok=True)
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if not arch or not is_model(arch):
        raise ValueError(f'model has architecture {arch!r}, not a qzoo model name: build it with qzoo.create_model')
    args = model_args_of(model)
    meta = dict(format='pt', architecture=arch, neuron=str(getattr(model, 'neuron', 'linear')),
                params=str(count_params(model)), model_args=json.dumps(args, sort_keys=True),
                dtype=str(dtype).replace('torch.', '') if dtype else 'as trained')
    sha = save_weights(model.state_dict(), directory / WEIGHTS_NAME, meta, dtype)
    qz = dict(sha256=sha, neuron=meta['neuron'], params=int(meta['params']), weights_dtype=meta['dtype'])
    if results:
        qz['results'] = results
    model._model_args = args
    config = write_config(model, directory / CONFIG_NAME, qz, model.pretrained_cfg.get('label_names'))
    if card:
        atomic_write_text(directory / 'README.md', model_card(config, name))
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
