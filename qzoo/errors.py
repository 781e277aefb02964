"""The exceptions qzoo raises on bad input, in one place.

Every error names the file or key at fault, what was expected, what was found and the fix.
Each is (a subclass of) one of the documented types, so ``except ValueError`` /
``except OSError`` / ``except CheckpointError`` keep working:

* ``ValueError``: a bad name, size, shape or option; :class:`RecipeError` (a recipe key or
  value) and :class:`DataError` (a data file's content) are ValueErrors.
* ``TypeError``: a value of the wrong type or dtype.
* ``FileNotFoundError``: a missing file, with where to put it.
* :class:`CheckpointError`: weights that are missing, corrupt, refused or do not fit.
  (``qzoo.external.ExternalCheckpointError`` is its counterpart for external checkpoints.)
* :class:`TrainingDiverged`: the loss became NaN/inf; the last good checkpoint was kept.
* :class:`DivergenceWarning` (a warning, not an error): the training loss blew up or the validation
  outputs became non-finite (:mod:`qzoo.divergence`); training goes on and the run records it.
* ``OSError``: :class:`CheckpointWriteError` (a checkpoint or output could not be written;
  the previous one is intact), :class:`RunDirError` (a run folder that cannot be used) and
  :class:`NotARegularFileError` (a path qzoo writes or must read as a plain file is something else:
  a folder, FIFO, device, socket, a symbolic link where links are not followed, or a path below a
  file; :mod:`qzoo.fileio` refuses it instead of replacing or following it).
"""
from __future__ import annotations

__all__ = ['RecipeError', 'DataError', 'CheckpointError', 'TrainingDiverged', 'DivergenceWarning',
           'CheckpointWriteError', 'RunDirError', 'NotARegularFileError']


class RecipeError(ValueError):
    """A recipe is malformed: unknown key, bad value, missing or unreadable file."""


class DataError(ValueError):
    """A data file (or a cached decoded copy) does not hold what it should."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, refused, or does not fit the model."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint was kept."""


class DivergenceWarning(UserWarning):
    """Training diverged (qzoo.divergence): the loss blew up or the validation outputs became NaN/inf."""


class CheckpointWriteError(OSError):
    """A checkpoint or run output could not be written; the previous one is intact."""


class RunDirError(OSError):
    """A run folder cannot be used: it is a file, not writable, or in use by another run."""


class NotARegularFileError(OSError):
    """A path that qzoo writes (or must read) as a regular file is something else: a folder, a FIFO, a device, a
    socket, a symbolic link where links are not followed, or a path below a file. Nothing was written."""
