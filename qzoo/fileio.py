"""File helpers every layer uses: SHA-256 of a file, atomic writes, lock files and reading a file that must be a
regular file.

An atomic write goes to a temporary file in the same folder, is flushed and fsynced, then
renamed over the target: readers see the old file or the new one, never a partial one, and a
failed write (disk full, permissions) leaves the old file and no temporary file behind.
New files get the usual permissions (0666 minus the umask), like ``open(path, 'w')``.

What an atomic write replaces (:func:`check_target`): a regular file, or nothing. A symbolic link is
written through: its final target is replaced (atomically, in the target's folder) and the link stays.
A target that exists and is not a regular file (a folder, FIFO, device node or socket), a path below a
file and a link loop raise :class:`~qzoo.errors.NotARegularFileError` naming the path and the fix, and
nothing is written: a rename would otherwise swap, e.g., ``/dev/null`` for a regular file. Every writer
of qzoo (train, publish, export, validate, eval, bench, launch) writes through these helpers.

Lock files (:func:`open_lock`, :func:`locked`) and files read as a run's own (:func:`read_regular`) are
opened without following symbolic links: a link there raises NotARegularFileError.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

from .errors import NotARegularFileError

try:
    import fcntl
except ImportError:  # not POSIX: locks are no-ops
    fcntl = None

__all__ = ['sha256_file', 'sha256_bytes', 'check_target', 'atomic_open', 'atomic_write_bytes', 'atomic_write_text',
           'atomic_write_json', 'open_lock', 'locked', 'read_regular', 'check_regular']

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


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
                        (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                        (stat.S_ISSOCK, 'a socket'), (stat.S_ISLNK, 'a symbolic link')):
        if test(mode):
            return words
    return 'not a regular file'


def _file_above(path: Path) -> Optional[Path]:
    """The nearest folder above ``path`` that exists as something other than a folder (a file), else None."""
    for p in path.parents:
        if os.path.lexists(p):
            return None if os.path.isdir(p) else p
    return None


def check_target(path: PathLike, parents: bool = False) -> Path:
    """The file an atomic write of ``path`` replaces: ``path``, or the final target of a symbolic link ``path``
    (written through). Raises :class:`~qzoo.errors.NotARegularFileError` when it exists and is not a regular file,
    when a folder above it is a file, or for a link loop; nothing is written then. Missing folders above it are
    created with ``parents``, else left for the caller (a command checks its output paths before any work)."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    via = f' (the target of the symbolic link {path})' if target != path else ''
    above = _file_above(target)
    if above is not None:
        raise NotARegularFileError(f'cannot write {path}{via}: {above} is a file, not a folder. Fix: choose a path '
                                   f'in a folder')
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise NotARegularFileError(f'cannot write {path}: it is a symbolic link that leads to itself (a loop). Fix: '
                                   'delete the link or point it at a file') from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise NotARegularFileError(
            f'{target}{via} is {_kind(st.st_mode)}, not a regular file: qzoo writes a file by replacing it whole and '
            f'will not replace this. Fix: pass a file path (a new file, or a regular file to overwrite)')
    if parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    return target


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = 'wb') -> Iterator[IO[Any]]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` (see :func:`check_target`) is replaced only if the block
    succeeds."""
    if mode not in ('wb', 'w'):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = check_target(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f'cannot write {path}: the folder {path.parent} does not exist. Fix: create it, or '
                                'choose a path in an existing folder')
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


def _open_nofollow(path: Path, flags: int, what: str) -> int:
    """``os.open`` of ``path`` that neither follows a symbolic link nor accepts anything but a regular file."""
    try:
        fd = os.open(path, flags | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
                     | getattr(os, 'O_NONBLOCK', 0), 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise NotARegularFileError(f'{path} is a symbolic link (to {os.readlink(path)}); {what} is never read or '
                                   f'written through a link. Fix: replace the link by the file itself') from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotARegularFileError(f'{path} is {_kind(mode)}, not a regular file; {what} must be a regular file. '
                                   f'Fix: move it away')
    return fd


def open_lock(path: PathLike) -> int:
    """A read-write descriptor of lock file ``path`` (created 0644 when missing), opened without following a
    symbolic link (a link there raises NotARegularFileError: locking would truncate what it points to)."""
    return _open_nofollow(Path(path), os.O_RDWR | os.O_CREAT, 'a lock file')


@contextlib.contextmanager
def locked(path: PathLike) -> Iterator[int]:
    """Hold an exclusive ``fcntl.flock`` on lock file ``path`` (see :func:`open_lock`) for the block, waiting for
    another holder to release it. The file stays (removing it would race with a waiting process)."""
    fd = open_lock(path)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def read_regular(path: PathLike, what: str = 'this file', limit: Optional[int] = None) -> bytes:
    """The bytes of ``path``, which must be a regular file reached without a symbolic link as its last part
    (NotARegularFileError otherwise; FileNotFoundError when it is missing); ValueError when it holds more than
    ``limit`` bytes (at most ``limit`` + 1 are read)."""
    fd = _open_nofollow(Path(path), os.O_RDONLY, what)
    with os.fdopen(fd, 'rb') as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f'{path} ({what}) holds more than {limit:,} bytes, more than qzoo reads from such a file')
    return data


def check_regular(path: PathLike, what: str = 'this file') -> Path:
    """``path``, when it is a regular file reached without a symbolic link as its last part (NotARegularFileError
    otherwise; FileNotFoundError when it is missing)."""
    os.close(_open_nofollow(Path(path), os.O_RDONLY, what))
    return Path(path)
