"""Files written whole or not at all, each under a temporary name of its own: a reader (or a resumed
run) never sees half a file, and two processes writing the same file never share a temporary one
(the later rename wins whole). Every writer of the project's outputs goes through here."""

import contextlib
import os
import tempfile

UMASK = os.umask(0o022)  # read once (umask can only be read by setting it) and put back at once
os.umask(UMASK)


@contextlib.contextmanager
def replacing(path):
    """A new temporary file beside `path` to write to (by name: torch.save, MXNet, np.savez take
    one); renamed onto `path` when the block ends, removed when it raises."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                               suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; an output gets the mode open() would give it
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path, data):
    """Write bytes to `path` whole or not at all."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
