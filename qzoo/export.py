"""Export qzoo models for deployment: ``torch.export`` programs and ONNX files.

::

    from qzoo.export import export_onnx, onnxruntime_max_abs_diff
    model = qzoo.create_model('qcnn', pretrained=True)
    path = export_onnx(model, 'qcnn.onnx')                 # dynamic batch, checked by onnx.checker
    onnxruntime_max_abs_diff(model, path)                  # max |onnxruntime - PyTorch| on random inputs

The example input is the model's default one, read from ``pretrained_cfg['input_size']``
with qzoo's convention for non-image models: ``(features, 1, 1)`` means the model takes
``(N, features)`` (the MLPs), ``(channels, 1, length)`` means ``(N, channels, length)`` (the
1-D bearing nets), anything else ``(N, C, H, W)``. Pass ``input_shape`` (batch first) to
export another size.

ONNX goes through the exporter torch recommends, ``torch.onnx.export(..., dynamo=True)``
(``torch.export`` underneath, translated with onnxscript). The file holds one input and one
output, named ``input_name`` / ``output_name``, whose first axis is named ``batch`` when
``dynamic_batch`` is set. ``onnx``, ``onnxscript`` and ``onnxruntime`` are optional
dependencies (``pip install 'qzoo[export]'``), imported only when a function needs them.

From the command line, :func:`main` is ``qzoo export NAME OUT.onnx [--pretrained] [--check]``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .fileio import atomic_write_bytes, check_target

__all__ = ['example_input_shape', 'export_program', 'export_onnx', 'onnxruntime_session',
           'onnxruntime_max_abs_diff', 'main']

PathLike = Union[str, os.PathLike]
#: the largest protobuf a single ONNX file can hold; bigger models keep their weights beside it
_PROTOBUF_LIMIT = 2 ** 31 - 1
INSTALL_HINT = "pip install 'qzoo[export]'  (or: pip install onnx onnxruntime onnxscript)"


def _require(module: str, what: str):
    """Import an optional dependency, or raise ImportError naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{what} needs the optional package {module!r}, which is not installed '
                          f'({e}). Install it with: {INSTALL_HINT}', name=module) from e


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def example_input_shape(model: nn.Module, batch_size: int = 1) -> Tuple[int, ...]:
    """The shape of a default input batch of ``model``: ``(batch_size, *sample)`` with the
    sample shape read from ``pretrained_cfg['input_size']`` (see the module docstring)."""
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    size = cfg.get('input_size')
    if size is None or len(size) != 3:
        raise ValueError(f'{_arch(model)}: pretrained_cfg has no 3-value input_size (found {size!r}); '
                         f'pass input_shape=(N, ...) explicitly')
    c, h, w = (int(v) for v in size)
    if (h, w) == (1, 1):
        sample = (c,)
    elif h == 1:
        sample = (c, w)
    else:
        sample = (c, h, w)
    return (int(batch_size),) + sample


def _example(model: nn.Module, input_shape: Optional[Sequence[int]], dynamic_batch: bool) -> Tensor:
    """A random float32 example input on the model's device. With a dynamic batch the example
    has at least 2 samples: torch.export specialises a batch of 1 to the constant 1."""
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else example_input_shape(model, 2)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f'{_arch(model)}: input_shape must be (N, ...) with positive sizes, got {input_shape!r}')
    if dynamic_batch and shape[0] < 2:
        shape = (2,) + shape[1:]
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device('cpu')
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)


def _dynamic_shapes(dynamic_batch: bool):
    return ({0: torch.export.Dim('batch', min=1)},) if dynamic_batch else None


class _EvalMode:
    """``with _EvalMode(model):`` runs in eval mode and restores the previous mode."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def export_program(model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode on its default input (or
    ``input_shape``), with the batch axis dynamic (``Dim('batch', min=1)``) unless
    ``dynamic_batch=False``. The model's train/eval mode is restored."""
    with _EvalMode(model):
        x = _example(model, input_shape, dynamic_batch)
        return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(dynamic_batch))


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def export_onnx(model: nn.Module, path: PathLike, input_shape: Optional[Sequence[int]] = None,
                dynamic_batch: bool = True, *, opset_version: Optional[int] = None, input_name: str = 'input',
                output_name: str = 'output', external_data: Optional[bool] = None) -> Path:
    """Write ``model`` (in eval mode) as an ONNX file at ``path`` and return the path.

    Uses ``torch.onnx.export(..., dynamo=True)`` on the default input (or ``input_shape``,
    batch first); ``dynamic_batch`` names the first axis of the input and output ``batch``.
    ``opset_version`` None takes torch's recommended opset. ``external_data`` None keeps the
    weights inside the file unless they pass protobuf's 2 GiB limit (then they go to
    ``<path>.data`` beside it). The model is checked with ``onnx.checker.check_model(...,
    full_check=True)`` and its input/output names are verified. Parent folders are created, and a
    target that is not a regular file is refused first (:func:`qzoo.fileio.check_target`);
    a model inside the protobuf limit is checked first, then replaces ``path`` atomically."""
    _require('onnx', 'export_onnx')
    _require('onnxscript', 'export_onnx (torch.onnx.export with dynamo=True)')
    path = Path(path)
    check_target(path, parents=True)  # a folder, FIFO, device or a path below a file: refused before the export
    if external_data is None:
        external_data = _param_bytes(model) > _PROTOBUF_LIMIT // 2
    with _EvalMode(model):
        x = _example(model, input_shape, dynamic_batch)
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=[input_name],
                                        output_names=[output_name], dynamic_shapes=_dynamic_shapes(dynamic_batch),
                                        opset_version=opset_version, external_data=external_data, verbose=False)
        except Exception as e:
            if hasattr(e, 'add_note'):
                e.add_note(f'qzoo.export.export_onnx: exporting {_arch(model)} with an input of shape '
                           f'{tuple(x.shape)} (dynamic_batch={dynamic_batch}) failed')
            raise
    if external_data:
        program.save(str(path), external_data=True)
        _check_onnx(str(path), path, input_name, output_name)
    else:  # checked before it is written: a failed check leaves an existing file as it was
        proto = program.model_proto
        _check_onnx(proto, path, input_name, output_name)
        atomic_write_bytes(path, proto.SerializeToString())
    return path


def _check_onnx(model, path: Path, input_name: str, output_name: str) -> None:
    """``onnx.checker`` (full check, with shape inference) of ``model`` (a ModelProto or a file
    path) and the graph's input/output names."""
    onnx = _require('onnx', 'export_onnx')
    onnx.checker.check_model(model, full_check=True)
    graph = (onnx.load(model, load_external_data=False) if isinstance(model, str) else model).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [input_name] or outputs != [output_name]:
        raise ValueError(f'{path}: the exported graph has inputs {inputs} and outputs {outputs}; expected '
                         f'[{input_name!r}] and [{output_name!r}] (a model with several inputs or outputs '
                         f'needs its own export)')


def onnxruntime_session(path: PathLike, threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` on ``CPUExecutionProvider`` with
    ``threads`` intra-op threads (default: ``torch.get_num_threads()``) and one inter-op thread."""
    ort = _require('onnxruntime', 'onnxruntime_session')
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'onnxruntime_session: no ONNX file at {path}; write one with export_onnx')
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=['CPUExecutionProvider'])


def onnxruntime_max_abs_diff(model: nn.Module, path: PathLike,
                             inputs: Union[Tensor, Sequence[Tensor], None] = None,
                             batch_sizes: Sequence[int] = (1, 3), seed: int = 0) -> float:
    """Max absolute difference between ``path`` run by onnxruntime (CPUExecutionProvider) and
    ``model`` in eval mode, over ``inputs`` (a tensor or a list of them; default: one standard
    normal batch of the default input shape per size in ``batch_sizes``). Raises ValueError
    when an output shape differs. The model's train/eval mode is restored."""
    session = onnxruntime_session(path)
    name = session.get_inputs()[0].name
    if inputs is None:
        g = torch.Generator().manual_seed(seed)
        inputs = [torch.randn(example_input_shape(model, n), generator=g) for n in batch_sizes]
    elif isinstance(inputs, Tensor):
        inputs = [inputs]
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device('cpu')
    worst = 0.0
    with _EvalMode(model), torch.no_grad():
        for x in inputs:
            want = model(x.to(device)).float().cpu()
            got = torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])
            if tuple(got.shape) != tuple(want.shape):
                raise ValueError(f'{path}: onnxruntime returned shape {tuple(got.shape)} for input '
                                 f'{tuple(x.shape)}; PyTorch returns {tuple(want.shape)}')
            worst = max(worst, float((got - want).abs().max()))
    return worst


# ---- the command line ------------------------------------------------------------------------
EXPORT_HELP = """Export a qzoo model as an ONNX file (checked by onnx.checker), optionally compared with PyTorch on
onnxruntime.

    qzoo export qcnn qcnn.onnx --pretrained --check          # the default published weights of qcnn
    qzoo export qcnn_w8.cwru-clean-s1 qcnn_w8.onnx           # published weights by name (implies --pretrained)
    qzoo export qresnet20 qresnet20.onnx --input-shape 1 3 64 64 --static-batch

NAME is an architecture (qzoo list), published weights <architecture>.<tag> (qzoo list --pretrained), or a
timm source (hf-hub:org/name, local-dir:FOLDER). --check runs the file on onnxruntime (CPU) at batch sizes 1
and 3 and fails (exit 1) when max |onnxruntime - PyTorch| > --rtol * max(1, max |PyTorch|). Needs the optional
packages of pip install 'qzoo[export]'.
"""


def _export_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('name', help='architecture, <architecture>.<tag>, hf-hub:org/name or local-dir:FOLDER')
    ap.add_argument('out', help='the ONNX file to write (parent folders are created)')
    ap.add_argument('--pretrained', action='store_true',
                    help="load published weights (the architecture's default; implied by <architecture>.<tag>)")
    ap.add_argument('--check', action='store_true', help='compare onnxruntime with PyTorch (see above)')
    ap.add_argument('--rtol', type=float, default=1e-4, help='--check: tolerance relative to the output scale')
    ap.add_argument('--input-shape', type=int, nargs='+', metavar='N',
                    help="the example input, batch first (default: the model's input_size)")
    ap.add_argument('--static-batch', action='store_true', help='a fixed batch size instead of a dynamic one')
    ap.add_argument('--opset', type=int, default=None, help="ONNX opset (default: torch's recommended one)")
    return ap


def _check_parity(model: nn.Module, path: Path, input_shape, dynamic: bool, rtol: float) -> bool:
    """Print max |onnxruntime - PyTorch| over random inputs (batch 1 and 3, or ``input_shape``); whether it is
    within ``rtol * max(1, max |PyTorch|)``."""
    g = torch.Generator().manual_seed(0)
    if input_shape:
        shapes = [tuple(input_shape)] + ([(3,) + tuple(input_shape[1:])] if dynamic else [])
    else:
        shapes = [example_input_shape(model, n) for n in (1, 3)]
    inputs = [torch.randn(shape, generator=g) for shape in shapes]
    with _EvalMode(model), torch.no_grad():
        scale = max(float(model(x).abs().max()) for x in inputs)
    diff = onnxruntime_max_abs_diff(model, path, inputs)
    ok = diff <= rtol * max(1.0, scale)
    print(f'onnxruntime vs PyTorch: max |diff| {diff:.3g} (output scale {scale:.3g}, inputs '
          f'{", ".join(str(s) for s in shapes)}): {"ok" if ok else f"ABOVE the tolerance {rtol:g} x max(1, scale)"}')
    return ok


def main(argv=None) -> int:
    """``qzoo export`` (see :data:`EXPORT_HELP`); returns the exit status."""
    from .errors import CheckpointError
    from .hub import create_model
    a = _export_parser().parse_args(argv)
    pretrained = a.pretrained or a.name.startswith(('hf-hub:', 'local-dir:')) or '.' in a.name.split(':')[-1]
    try:
        model = create_model(a.name, pretrained=pretrained).eval()
        shape = a.input_shape or (example_input_shape(model, 1) if a.static_batch else None)
        path = export_onnx(model, a.out, input_shape=shape, dynamic_batch=not a.static_batch, opset_version=a.opset)
        print(f'wrote {path} ({a.name}{", pretrained" if pretrained else ", random weights"}; '
              f'{path.stat().st_size / 1e3:.0f} kB; checked by onnx.checker)')
        if a.check and not _check_parity(model, path, shape, not a.static_batch, a.rtol):
            return 1
    except (ValueError, TypeError, CheckpointError, ImportError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
