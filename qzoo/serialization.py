"""Weights files: safetensors read with a SHA-256 check, written deterministically.

* :func:`load_weights` checks a file's full SHA-256 (when one is recorded), reads it with
  safetensors (no pickle, ever) and returns ``(state_dict, metadata)``.
* :func:`save_weights` writes a state dict atomically and *deterministically*: the same
  tensors and metadata give the same bytes (safetensors itself writes its JSON header in
  hash-map order), so republishing identical weights keeps their hash.
* :func:`read_header` lists a file's tensor names, shapes and dtypes without reading the
  tensors, so a model can be checked against a file before anything is allocated.
* :func:`check_fits` compares a state dict (or a header) with a model's own.
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .bounds import MAX_JSON_BYTES, read_bounded
from .errors import CheckpointError, CheckpointWriteError
from .fileio import atomic_write_bytes, sha256_file

__all__ = ['load_weights', 'save_weights', 'read_header', 'check_fits', 'check_sha256', 'valid_sha256',
           'safetensors_bytes', 'hub_cache_error']

_SHA256 = re.compile(r'^[0-9a-f]{64}$')
#: safetensors dtype names -> torch dtypes (those a state dict can hold)
_DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
           'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
           'BOOL': torch.bool}


def valid_sha256(value: Any) -> bool:
    """True for a full, lower-case hex SHA-256 (64 digits)."""
    return isinstance(value, str) and bool(_SHA256.match(value))


def check_sha256(path: Union[str, Path], expected: str, fix: str) -> None:
    """Raise :class:`CheckpointError` unless ``path``'s SHA-256 is exactly ``expected``."""
    path = Path(path)
    if not valid_sha256(expected):
        raise CheckpointError(f'the SHA-256 recorded for {path} is {expected!r}, not a 64-digit hex digest, so the '
                              f'file cannot be verified. Fix: {fix}')
    found = sha256_file(path)
    if found != expected:
        raise CheckpointError(
            f'checksum mismatch for {path}: expected SHA-256 {expected}, found {found} ({path.stat().st_size} bytes; '
            f'the file is corrupt, truncated or a different checkpoint). Fix: {fix}')


def _require_file(path: Path, fix: str) -> None:
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} does not exist. Fix: {fix}')
    if path.suffix != '.safetensors':
        raise CheckpointError(f'{path} is not a .safetensors file: qzoo loads weights only as safetensors (it never '
                              f'unpickles). Fix: convert it with qzoo.hub.save_pretrained')


def read_header(path: Union[str, Path], fix: str = 'delete the file and download it again'
                ) -> Tuple[Dict[str, Tuple[Tuple[int, ...], torch.dtype]], Dict[str, str]]:
    """``({name: (shape, dtype)}, metadata)`` of a safetensors file, tensors left unread."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    _require_file(path, fix)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = dict(f.metadata() or {})
            entries = {}
            for k in f.keys():
                s = f.get_slice(k)
                entries[k] = (tuple(s.get_shape()), _DTYPES.get(s.get_dtype(), s.get_dtype()))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'cannot read {path} as safetensors ({e}); the file is corrupt or truncated '
                              f'({path.stat().st_size} bytes). Fix: {fix}') from None
    return entries, meta


def load_weights(path: Union[str, Path], expected_sha256: Optional[str] = None,
                 fix: str = 'delete the file and download it again') -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a ``.safetensors`` file after checking its SHA-256 (when ``expected_sha256`` is given:
    it must then be a full 64-digit digest); returns ``(state_dict, metadata)``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    path = Path(path)
    _require_file(path, fix)
    if expected_sha256 is not None:
        check_sha256(path, expected_sha256, fix)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = dict(f.metadata() or {})
        sd = load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'cannot read {path} as safetensors ({e}); the file is corrupt or truncated '
                              f'({path.stat().st_size} bytes). Fix: {fix}') from None
    return sd, meta


def safetensors_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """The safetensors serialisation of ``state_dict`` with its JSON header in sorted key order."""
    from safetensors.torch import save
    raw = save(dict(state_dict), metadata=dict(metadata) if metadata else None)
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if '__metadata__' in header:
        header['__metadata__'] = dict(sorted(header['__metadata__'].items()))
    text = json.dumps(header, sort_keys=True, separators=(',', ':')).encode()
    text += b' ' * (-(8 + len(text)) % 8)  # the data section stays 8-byte aligned, as safetensors writes it
    return struct.pack('<Q', len(text)) + text + raw[8 + n:]


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Union[str, Path],
                 metadata: Optional[Dict[str, str]] = None, dtype: Optional[torch.dtype] = None) -> str:
    """Write a state dict as safetensors, atomically and deterministically; returns its SHA-256.
    ``dtype`` converts floating tensors (e.g. ``torch.float16`` for storage)."""
    path = Path(path)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in state_dict.items()}
    try:
        atomic_write_bytes(path, safetensors_bytes(sd, metadata or {'format': 'pt'}))
    except OSError as e:
        raise CheckpointWriteError(e.errno, f'could not write {path} ({e.strerror or e}); any previous file there is '
                                   f'intact. Fix: free disk space or fix the permissions, then save again',
                                   str(path)) from e
    return sha256_file(path)


def _few(xs) -> str:
    return ', '.join(xs[:4]) + (f' (+{len(xs) - 4} more)' if len(xs) > 4 else '')


_FIT_FIX = ('create the architecture and arguments the checkpoint was saved with (its config.json: '
            'architecture, model_args, num_classes), or pass num_classes/in_chans to let timm adapt the head/stem')


def check_fits(model: nn.Module, found: Mapping[str, Any], file: str, arch: str, fix: str = _FIT_FIX) -> None:
    """Raise :class:`CheckpointError` unless ``found`` (a state dict, or :func:`read_header`'s
    ``{name: (shape, dtype)}``) has exactly ``model``'s keys and shapes, floating tensors where the
    model has floating ones and integer tensors where it has integer ones."""
    own = model.state_dict()

    def spec(v):
        return (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (tuple(v[0]), v[1])
    got = {k: spec(v) for k, v in found.items()}
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    shapes, dtypes = [], []
    for k in sorted(set(got) & set(own)):
        shape, dt = got[k]
        if shape != tuple(own[k].shape):
            shapes.append(f'{k}: checkpoint {shape} vs model {tuple(own[k].shape)}')
        elif not isinstance(dt, torch.dtype) or dt.is_floating_point != own[k].dtype.is_floating_point \
                or (dt == torch.bool) != (own[k].dtype == torch.bool):
            dtypes.append(f'{k}: checkpoint {dt} vs model {own[k].dtype}')
    if missing or unexpected or shapes or dtypes:
        parts = [f'missing {len(missing)} keys: {_few(missing)}' if missing else '',
                 f'unexpected {len(unexpected)} keys: {_few(unexpected)}' if unexpected else '',
                 f'shape mismatches: {_few(shapes)}' if shapes else '',
                 f'dtype mismatches: {_few(dtypes)}' if dtypes else '']
        raise CheckpointError(f'the weights in {file} do not fit {arch} ({len(own)} state entries): '
                              + '; '.join(p for p in parts if p) + f'. Fix: {fix}')


# ---- where weights come from: a folder, a Hugging Face repo, a URL --------------------------------
def read_config(folder: Union[str, Path]) -> Dict[str, Any]:
    """A checkpoint folder's ``config.json`` (timm's format, plus qzoo's block)."""
    cfg = Path(folder) / 'config.json'
    if not cfg.exists():
        raise CheckpointError(f'{folder} has no config.json. Fix: point at a folder written by '
                              f'qzoo.hub.save_pretrained (model.safetensors + config.json)')
    fix = 'restore it, or rewrite the folder with qzoo.hub.save_pretrained'
    try:
        config = json.loads(read_bounded(cfg, MAX_JSON_BYTES, 'config file', CheckpointError, fix).decode('utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f'{cfg} is not readable JSON ({type(e).__name__}: {e}). Fix: restore it, or '
                              f'rewrite the folder with qzoo.hub.save_pretrained') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{cfg} holds a {type(config).__name__}, expected a JSON object. Fix: restore it')
    return config


def recorded_sha256(config: Mapping[str, Any], where: str) -> Optional[str]:
    """The weights' SHA-256 a config.json records (None for a folder not written by qzoo). A qzoo
    block with a missing, empty or malformed hash is refused: it must not switch the check off."""
    qz = config.get('qzoo')
    if qz is None:
        return None
    sha = qz.get('sha256') if isinstance(qz, Mapping) else None
    if not valid_sha256(sha):
        raise CheckpointError(f'{where} records the weights\' SHA-256 as {sha!r}, not a 64-digit hex digest, so the '
                              f'weights cannot be verified. Fix: restore config.json, or rewrite the folder with '
                              f'qzoo.hub.save_pretrained')
    return sha


def load_folder(folder: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Path]:
    """``(state_dict, config, weights file)`` of a saved folder, SHA-256 checked against config.json."""
    folder = Path(folder).expanduser()
    config = read_config(folder)
    file = folder / 'model.safetensors'
    sd, _ = load_weights(file, recorded_sha256(config, str(folder / 'config.json')),
                         fix='rewrite the folder with qzoo.hub.save_pretrained')
    return sd, config, file


def hf_download(repo: str, filename: str, cache_dir=None) -> Path:
    """``hf_hub_download`` of ``repo`` (``org/name[@revision]``); offline it serves the HF cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    repo_id, _, revision = repo.partition('@')
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir))
    except HFValidationError as e:
        raise CheckpointError(f'hf-hub:{repo} does not name a Hugging Face repository ({str(e).splitlines()[0]}). '
                              f'Fix: write hf-hub:<org>/<name>[@<revision>]') from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise CheckpointError(
            f'{filename} of hf-hub:{repo} could not be fetched ({type(e).__name__}) and is not in the Hugging Face '
            f'cache. Fix: connect once (or unset HF_HUB_OFFLINE) to download it, copy the repository into the cache '
            f'at $HF_HUB_CACHE (now {os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")}), or load a local '
            f'folder with qzoo.hub.from_pretrained("/path/to/folder")') from None


def load_hf_repo(repo: str, cache_dir=None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Path]:
    """``(state_dict, config, weights file)`` of a Hugging Face repository written by qzoo."""
    config_file = hf_download(repo, 'config.json', cache_dir)
    config = read_config(config_file.parent)
    file = hf_download(repo, 'model.safetensors', cache_dir)
    sd, _ = load_weights(file, recorded_sha256(config, f'hf-hub:{repo} config.json'),
                         fix=f'delete {file} from the Hugging Face cache and download it again')
    return sd, config, file


def hub_cache_error(path: Path, e: OSError) -> CheckpointWriteError:
    """The error for a file that cannot be put in torch.hub's cache (``$TORCH_HOME/hub``), naming the folder and
    where it comes from (TORCH_HOME set to a file, a read-only folder)."""
    home = os.environ.get('TORCH_HOME')
    src = f'TORCH_HOME={home}' if home else 'the default ~/.cache/torch (TORCH_HOME is not set)'
    return CheckpointWriteError(f"cannot put {path.name} in torch.hub's cache {Path(path).parent} "
                                f"({e.strerror or e}; the cache is $TORCH_HOME/hub, here from {src}). Fix: point "
                                f'TORCH_HOME at a writable folder (not a file), or unset it')


_TORCH_HUB_HASH = re.compile(r'-([0-9a-f]{8,64})$')


def download_url(url: str, check_hash: bool = False) -> Path:
    """The local copy of an ``https://`` URL in torch.hub's cache, downloaded once.

    The cache is keyed by the whole URL (``<hub dir>/checkpoints/qzoo-url/<sha256(url)[:16]>/<file>``),
    so two sites' ``model.safetensors`` never mix. With ``check_hash`` the file name must follow
    torch.hub's convention ``<name>-<first 8+ hex digits of its SHA-256>.<ext>`` and is checked."""
    from urllib.error import URLError
    from urllib.parse import urlparse
    from .fileio import sha256_bytes
    parsed = urlparse(url)
    if parsed.scheme != 'https' or not parsed.netloc:
        raise CheckpointError(f'{url!r}: only https:// URLs are downloaded (got scheme {parsed.scheme!r}). Fix: use '
                              f'the https URL, or pass a local path instead of a file:// URL')
    base = Path(parsed.path).name
    if not base:
        raise CheckpointError(f'{url!r} does not end in a file name. Fix: give the URL of a .safetensors file')
    dest = Path(torch.hub.get_dir()) / 'checkpoints' / 'qzoo-url' / sha256_bytes(url)[:16] / base
    prefix = None
    if check_hash:
        m = _TORCH_HUB_HASH.search(Path(base).stem)
        if not m:
            raise CheckpointError(f'check_hash=True: {base!r} does not carry a SHA-256 prefix in torch.hub\'s '
                                  f'convention (<name>-<hex>.<ext>). Fix: use check_hash=False')
        prefix = m.group(1)
    if not dest.is_file():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise hub_cache_error(dest, e) from None
        try:
            torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix, progress=False)
        except (URLError, OSError) as e:
            raise CheckpointError(f'cannot download {url} ({e}) and it is not cached at {dest}. Fix: download it '
                                  f'yourself to that path (torch.hub\'s cache; set TORCH_HOME to move it)') from None
        except RuntimeError as e:  # torch.hub's hash check
            raise CheckpointError(f'{url}: the download fails its hash check ({e}); nothing was cached. Fix: retry; '
                                  f'if it persists the file at that URL changed') from None
    elif prefix and not sha256_file(dest).startswith(prefix):
        raise CheckpointError(f'{dest} (cached from {url}) fails its hash check: its SHA-256 does not start with '
                              f'{prefix}. Fix: delete it and load again')
    return dest
