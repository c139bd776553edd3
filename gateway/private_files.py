"""Files that hold claims or secrets are the owner's alone: mode ``0600``, whatever the umask.

Every such file the gateway writes goes through here: the audit log and the decision log
(principals, paths, policy input), generated private keys (Txn-Token signing keys, the dev
CA's and the dev leaf keys), and the demo's secrets and config.

- :func:`open_private_append` opens a log for appending. A new file is created ``0600``
  (``os.open`` with an explicit mode, so the umask can only remove bits); a file that already
  exists with group/other bits -- created by hand, by an older release, by a log shipper -- is
  narrowed to its owner bits with ``fchmod`` on the open descriptor (no path race). Only
  regular files are touched: ``/dev/stdout`` or a FIFO keep their modes.
- :func:`write_atomic` writes a whole file through a same-directory temp file created ``0600``
  with ``O_EXCL`` and ``os.replace``: the bytes are never readable by others, not even
  briefly, and a reader sees the old file or the new one, never half of one. ``mode`` may
  widen the final file (a certificate is public, ``0644``); the default is ``0600``.
- :func:`create_exclusive` creates a ``0600`` file only if the name is free (hard link from a
  private temp file): the first of two concurrent creators wins, the other keeps its file.

Imports nothing of the gateway: any module may use it.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

PRIVATE = 0o600


def restrict(fd: int) -> None:
    """Drop group/other bits of the regular file open as ``fd`` (keep the owner's)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)  # SECURITY: owner only


def open_private_append(path: Path | str) -> io.TextIOWrapper:
    """``path`` opened for appending text (line-buffered), created ``0600`` if new."""
    # SECURITY: the mode is given at creation, not chmod-ed afterwards: no readable window.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
    try:
        restrict(fd)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path: Path | str, data: bytes, *, mode: int = PRIVATE) -> None:
    """Replace ``path`` with ``data`` atomically; the file is ``mode`` (``0600``) at rest.

    A missing parent folder is created ``0700``. Raises ``OSError``.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # SECURITY: O_EXCL: never write into a file (or through a symlink) someone planted there.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            if mode != PRIVATE:
                os.fchmod(fh.fileno(), mode)  # fchmod ignores the umask, as wanted here
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_exclusive(path: Path | str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` (``0600``) unless it exists; True if this call made it.

    Two processes creating the same file at once (``agentgate run`` and
    ``agentgate token mint-access`` both creating the dev issuer key) agree on one file: the
    bytes go to a private temp file that is then hard-linked into place, which fails if the
    name exists, so the loser keeps the winner's file and a reader never sees half of it.
    A missing parent folder is created ``0700``. Raises ``OSError``.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # SECURITY: link() never replaces an existing file, unlike rename().
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
