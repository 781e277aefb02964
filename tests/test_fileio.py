"""qzoo.fileio: what an atomic write replaces (a regular file or nothing: a symbolic link is written through; a
folder, FIFO, socket, device node, a path below a file or a link loop is refused with NotARegularFileError and left
as it was), for the helpers and for the commands that write a path the user gives; lock files and run files are
never opened through a link."""
import os
import socket
import stat

import pytest

from qzoo import fileio
from qzoo.errors import NotARegularFileError


def _fifo(path):
    os.mkfifo(path)
    return path


def _socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the socket file stays
    return path


def _folder(path):
    path.mkdir()
    return path


KINDS = {'fifo': (_fifo, stat.S_ISFIFO, 'FIFO'), 'socket': (_socket, stat.S_ISSOCK, 'socket'),
         'folder': (_folder, stat.S_ISDIR, 'folder')}


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith('.tmp')]


@pytest.mark.parametrize('kind', list(KINDS))
def test_a_write_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    make, is_kind, word = KINDS[kind]
    target = make(tmp_path / 'out.csv')
    for write in (lambda p: fileio.atomic_write_text(p, 'x'), lambda p: fileio.atomic_write_json(p, {}),
                  lambda p: fileio.atomic_write_bytes(p, b'x')):
        with pytest.raises(NotARegularFileError, match=f'{target} is a {word}.*Fix: pass a file path'):
            write(target)
        assert is_kind(os.lstat(target).st_mode)  # still what it was
        link = tmp_path / 'link.csv'
        link.unlink(missing_ok=True)
        link.symlink_to(target)  # nor through a link to it
        with pytest.raises(NotARegularFileError, match=f'the target of the symbolic link {link}'):
            write(link)
        assert is_kind(os.lstat(target).st_mode) and os.path.islink(link)
    assert _leftovers(tmp_path) == []


def test_a_device_node_is_refused_before_anything_is_written():
    """As root, `qzoo export mlp_h8 /dev/null` used to replace the machine's /dev/null by a regular file."""
    with pytest.raises(NotARegularFileError, match='/dev/null is a character device'):
        fileio.check_target('/dev/null')  # checked first: without the fix the write below would replace it
    with pytest.raises(NotARegularFileError, match='/dev/null is a character device'):
        fileio.atomic_write_bytes('/dev/null', b'x')
    assert stat.S_ISCHR(os.stat('/dev/null').st_mode)


def test_a_write_goes_through_a_symbolic_link(tmp_path):
    real = tmp_path / 'real' / 'results.csv'
    real.parent.mkdir()
    real.write_text('old')
    link = tmp_path / 'results.csv'
    link.symlink_to(os.path.relpath(real, tmp_path))
    fileio.atomic_write_text(link, 'new')
    assert os.path.islink(link) and real.read_text() == 'new' and link.read_text() == 'new'
    assert oct(os.stat(real).st_mode & 0o777) == oct(0o666 & ~_umask())
    dangling = tmp_path / 'dangling.csv'
    dangling.symlink_to(tmp_path / 'real' / 'made.csv')
    fileio.atomic_write_text(dangling, 'made')  # a link to a file not written yet: the file is created
    assert os.path.islink(dangling) and (tmp_path / 'real' / 'made.csv').read_text() == 'made'
    assert _leftovers(tmp_path) == [] and _leftovers(real.parent) == []


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_path_below_a_file_and_a_link_loop_are_refused(tmp_path):
    f = tmp_path / 'file'
    f.write_text('mine')
    for below in (f / 'x.onnx', f / 'deeper' / 'x.onnx'):
        with pytest.raises(NotARegularFileError, match=f'{f} is a file, not a folder'):
            fileio.atomic_write_text(below, 'x')
        with pytest.raises(NotARegularFileError, match=f'{f} is a file, not a folder'):
            fileio.check_target(below, parents=True)
    assert f.read_text() == 'mine'
    loop = tmp_path / 'loop'
    loop.symlink_to(loop)
    with pytest.raises(NotARegularFileError, match='loop'):
        fileio.atomic_write_text(loop, 'x')
    with pytest.raises(FileNotFoundError, match=f'the folder {tmp_path / "missing"} does not exist'):
        fileio.atomic_write_text(tmp_path / 'missing' / 'x', 'x')
    assert fileio.check_target(tmp_path / 'made' / 'x', parents=True) == tmp_path / 'made' / 'x'
    assert (tmp_path / 'made').is_dir()


def test_lock_and_run_files_are_never_opened_through_a_link(tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('precious')
    link = tmp_path / 'x.lock'
    link.symlink_to(victim)
    with pytest.raises(NotARegularFileError, match=f'{link} is a symbolic link'):
        fileio.open_lock(link)
    with pytest.raises(NotARegularFileError, match=f'{link} is a symbolic link'):
        with fileio.locked(link):
            pass
    with pytest.raises(NotARegularFileError, match='symbolic link'):
        fileio.read_regular(link)
    assert victim.read_text() == 'precious'
    with pytest.raises(NotARegularFileError, match='FIFO'):
        fileio.read_regular(_fifo(tmp_path / 'pipe'))  # refused at once, not a read that waits for a writer
    with fileio.locked(tmp_path / 'ok.lock'):
        assert (tmp_path / 'ok.lock').is_file()
    assert fileio.read_regular(victim) == b'precious'


# ---- the commands: each refuses the path at once, exit status 2 and an `error:` line -------------------
def _command(name):
    from qzoo import benchmark, efficiency, evaluation, export
    return {'export': lambda out: export.main(['mlp_h8', out]),
            'validate': lambda out: evaluation.main(['--weights', 'qmlp_h2.synthetic-moons-d2-s0', '--results-file',
                                                     out]),
            'bench': lambda out: benchmark.cli(['--models', 'mlp', '--device', 'cpu', '--results-file', out]),
            'eval': lambda out: efficiency.main(['--out', out])}[name]


@pytest.mark.parametrize('name', ['export', 'validate', 'bench'])
def test_commands_refuse_a_fifo_output_with_an_error_line(tmp_path, capsys, name):
    fifo = _fifo(tmp_path / 'out')
    assert _command(name)(str(fifo)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith('error: ') and f'{fifo} is a FIFO' in err and 'Traceback' not in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_eval_refuses_an_out_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / 'results'
    f.write_text('mine')
    with pytest.raises(SystemExit) as e:
        _command('eval')(str(f))
    assert e.value.code == 2 and f'{f} is a file, not a folder' in capsys.readouterr().err
    assert f.read_text() == 'mine'
