"""File helpers every layer uses: SHA-256 of a file and atomic writes.

An atomic write goes to a temporary file in the same folder, is flushed and fsynced, then
renamed over the target: readers see the old file or the new one, never a partial one, and a
failed write (disk full, permissions) leaves the old file and no temporary file behind.
New files get the usual permissions (0666 minus the umask), like ``open(path, 'w')``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

__all__ = ['sha256_file', 'sha256_bytes', 'atomic_open', 'atomic_write_bytes', 'atomic_write_text',
           'atomic_write_json']

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: Union[bytes, str]) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = 'wb') -> Iterator[IO[Any]]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` is replaced only if the block succeeds."""
    if mode not in ('wb', 'w'):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, mode, **({'encoding': 'utf-8'} if mode == 'w' else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, 'wb') as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, 'w') as f:
        f.write(text)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """JSON with sorted-as-given keys and a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + '\n')
