"""Files that are either complete or absent, and one writer per output folder.

Every file a later run trusts (tars, records, manifests, checkpoints, caches, results) is
written through :func:`atomic_output`: into a uniquely named temporary file in the same
folder, flushed, then renamed over the final name.  A crash or a full disk leaves the old
file (or none), never a half-written one, and the error names the output and says that
nothing was committed.

:class:`FolderLock` keeps two builds from writing one folder: the second one is told who
holds it.  The lock is an ``flock`` on a file in the folder, so it dies with its process
and can never go stale on a local disk.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


class AtomicWriteError(OSError):
    """Writing an output failed; the message names it and says nothing was committed."""


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "a read-only file system"
    return exc.strerror or str(exc)


def make_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``mkdir -p`` with a one-line :class:`AtomicWriteError` (read-only, no permission, a
    file in the way) instead of an OSError traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtomicWriteError(exc.errno, f"cannot create the {what} {path}: {_reason(exc)}") from None
    return path


class RecordingWriter:
    """A file object that remembers the OSError of a failed write: libraries that write
    through it from C++ (torch.save) report a failure as a RuntimeError without the cause,
    and this keeps the cause (a full disk) for the one-line message."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """``with atomic_output(p, "w") as f: f.write(...)``: ``p`` appears only when the block
    succeeds.  ``fsync``: also force the data to disk before the rename (checkpoints)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp makes the file private (0600); outputs get the mode open() would give them
        os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError as exc:
        raise AtomicWriteError(exc.errno, f"cannot write {path}: {_reason(exc)}; nothing was committed") from exc
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
            raise AtomicWriteError(exc.errno, f"cannot write {path}: {_reason(exc)}; "
                                              "nothing was committed") from exc
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """JSON (NaN and infinities refused: they are not JSON) written atomically, newline-terminated."""
    return atomic_write(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


class LockedError(RuntimeError):
    """Another process holds the folder's lock (the message says which)."""


class FolderLock:
    """``with FolderLock(folder, "build"): ...``: an exclusive, non-blocking lock on
    ``folder/.lock`` (or ``folder/<name>``).  Raises :class:`LockedError` naming the holder."""

    def __init__(self, folder: str | os.PathLike, what: str = "build", name: str = ".lock"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        make_folder(self.folder)
        try:
            # never through a planted link: a symbolic link is refused by the open, a hard link
            # or anything but a plain file by the check below (the holder line truncates the file)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            why = "a symbolic link" if exc.errno == errno.ELOOP else _reason(exc)
            raise AtomicWriteError(exc.errno, f"cannot lock {self.folder}: {self.path} is {why}; refused "
                                              "(remove it if no build is running)") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            why = "not a plain file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} hard links"
            raise AtomicWriteError(errno.EPERM, f"cannot lock {self.folder}: {self.path} is {why}; refused "
                                                "(remove it if no build is running)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{self.folder} is locked by {holder} ({self.path}); wait for that "
                                  f"{self.what} to finish, or stop it") from None
            raise
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
