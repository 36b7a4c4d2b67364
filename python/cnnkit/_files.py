"""Files, both ways: readers refuse anything that is not a regular file (a FIFO, device, socket
or directory) without blocking on it, and every file cnnkit writes is written atomically."""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["NotARegularFileError", "open_regular", "read_regular", "atomic_write"]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class NotARegularFileError(OSError):
    """A path that should be read names a FIFO, device, socket or directory. ``path`` and
    ``kind`` (e.g. "a FIFO (named pipe)") say which."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path}: not a regular file ({kind}); only regular files are read")
        self.path, self.kind = path, kind

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable (multiprocessing)
        return type(self), (self.path, self.kind)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):#o}"


def _refuse(path: str, mode: int) -> NotARegularFileError:
    return NotARegularFileError(path, _kind(mode))


# O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer;
# O_NOCTTY: a terminal never becomes our controlling terminal. (Both absent on Windows.)
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for binary reading when it is a regular file (symlinks are followed).

    Anything else is refused with :class:`NotARegularFileError` (an OSError naming the path)
    before it is opened: a FIFO would block ``open`` until a writer appears, a device such as
    ``/dev/zero`` never ends. The file is opened non-blocking and checked again with ``fstat``,
    so a path swapped for a FIFO between the two checks is refused too, never waited on.
    Missing files raise FileNotFoundError, unreadable ones PermissionError, as ``open`` does.
    """
    p = os.fspath(path)
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(p, st.st_mode)
    fd = os.open(p, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(p, st.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # no effect on a regular file; plain reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], max_bytes: int,
                 too_big: Callable[[int], Exception]) -> bytearray:
    """The whole content of the regular file `path` (see :func:`open_regular`), at most
    `max_bytes`; a larger file raises ``too_big(size)`` before anything is read. A file that
    grows while it is read is cut at `max_bytes` + 1 bytes, so it is caught too."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise too_big(size)
        buf = bytearray(size)
        n = f.readinto(buf)
        if n != size:
            raise OSError(f"{os.fspath(path)}: short read ({n} of {size} bytes)")
        if f.read(1):
            raise too_big(size + 1)
    return buf


# ---------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------

STALE_TEMP_AGE = 60.0  # seconds without a write before another save may remove a temp file
_active_temp: set[str] = set()  # temporary files this process is writing now
_active_lock = threading.Lock()


def temp_prefix(name: str, pid: int | None = None) -> str:
    """Temporary files of a write to `name` are ``.<name>.<pid>.<random>.tmp``."""
    return f".{name}.{os.getpid() if pid is None else pid}."


def _writer_gone(pid: int, path: str) -> bool:
    """True when no process can still be writing the temp file `path` of writer `pid`."""
    if pid == os.getpid():
        with _active_lock:
            return path not in _active_temp  # ours, left by a failed or forked-off write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: the process exists, owned by someone else
        return False
    return False


def remove_stale_temp_files(directory: str, name: str) -> None:
    """Delete temporary files that an earlier write to `name` left behind when its process
    was killed (SIGKILL, power loss). Only files of exactly our pattern, untouched for
    STALE_TEMP_AGE seconds, whose writer process is gone; best effort (errors are ignored).
    The age guard protects a live writer that this process cannot see (another PID
    namespace, another host on a shared file system)."""
    head = "." + name + "."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not (entry.startswith(head) and entry.endswith(".tmp")):
            continue
        parts = entry[len(head) : -len(".tmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
            continue
        full = os.path.join(directory, entry)
        try:
            if now - os.lstat(full).st_mtime < STALE_TEMP_AGE:
                continue
            if _writer_gone(int(parts[0]), full):
                os.unlink(full)
        except OSError:
            pass


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None],
                 what: str = "save") -> str:
    """Write a file atomically: `write(f)` fills a temporary file in the target's directory
    (``.<name>.<pid>.<random>.tmp``), which is flushed, fsynced and renamed over `path` with
    :func:`os.replace`; then the directory is fsynced. On any failure the temporary file is
    removed and a previous file at `path` is untouched; a process killed mid-write leaves at
    most its temporary file, which a later write to the same target removes once stale.

    The new file keeps the mode of the file it replaces; a new file gets the mode a plain
    ``open(path, "wb")`` would give it (0o666 less the umask). The directory must exist
    (FileNotFoundError, prefixed by `what`). Returns `path` as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what}: directory {directory!r} does not exist")
    name = os.path.basename(path)
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    remove_stale_temp_files(directory, name)
    while True:
        tmp = os.path.join(directory, f"{temp_prefix(name)}{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    with _active_lock:
        _active_temp.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        with _active_lock:
            _active_temp.discard(tmp)
    _fsync_dir(directory)
    return path
