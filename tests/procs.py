"""Child processes for tests: each in its own process group, the whole group killed on the way out."""
import contextlib
import os
import signal
import subprocess
import sys

from conftest import ROOT


def child_env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', **extra)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (its children included) unless ``proc`` has already been reaped
    (its pid, the group's id, may then belong to another process), and reap ``proc``."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def group(cmd, **kwargs):
    """``Popen(cmd)`` in a new process group (session); the group is killed when the block exits."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


def run(cmd, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose process group is killed on a timeout or an error."""
    with group(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


PYTHON = sys.executable
