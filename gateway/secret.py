"""Resolved secrets (``env:NAME`` / ``file:path``) whose value never shows in a repr, log or error.

A :class:`Secret` is reachable only through :meth:`Secret.reveal`; ``file:`` secrets follow
their file and fail closed (:class:`SecretUnavailable`, 503) when it becomes unreadable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.errors import ServiceUnavailable


class SecretUnavailable(ServiceUnavailable):
    reason = "secret_unavailable"


class Secret:
    """A resolved secret. The value is reachable only through :meth:`reveal`.

    ``file:`` secrets follow their file: a change is picked up on the next use
    (the file is stat'ed at most once a second); a file that has become
    unreadable raises :class:`SecretUnavailable` (503), never an empty value.
    """

    __slots__ = ("_failed", "_mtime", "_next_check", "_path", "_value", "ref")

    def __init__(self, ref: str, value: bytes, path: Path | None = None) -> None:
        self.ref = ref  # e.g. "env:BILLING_KEY": safe to show
        self._value = value
        self._path = path
        self._mtime = _mtime(path) if path is not None else 0
        self._next_check = time.monotonic() + 1.0
        self._failed = False

    def reveal(self) -> bytes:
        # SECURITY: once the file has become unreadable, every use re-checks it (and fails)
        # until it is readable again; the old value is never served in between.
        if self._path is not None and (self._failed or time.monotonic() >= self._next_check):
            self._refresh(self._path)
        return self._value

    def reveal_str(self) -> str:
        """The value as text fit for a header or a form: UTF-8, no control characters."""
        try:
            text = self.reveal().decode("utf-8")
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret {self.ref} is not UTF-8 text") from None
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise SecretUnavailable(f"secret {self.ref} holds control characters") from None
        return text

    def _refresh(self, path: Path) -> None:
        self._next_check = time.monotonic() + 1.0
        try:
            mtime = _mtime(path)
            if mtime != self._mtime:
                self._value = _read_secret_file(path)
                self._mtime = mtime
        except OSError:
            # SECURITY: fail closed; the reference (a path) is safe to name, the value is not.
            self._failed = True
            raise SecretUnavailable(f"secret {self.ref} became unreadable") from None
        self._failed = False

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)


def _mtime(path: Path) -> int:
    st = path.stat()
    return st.st_mtime_ns ^ st.st_size


def _read_secret_file(path: Path) -> bytes:
    # A trailing newline in a secret file is an editor artefact, never part of the secret.
    return path.read_bytes().rstrip(b"\r\n")


def resolve_secret(ref: str, base_dir: Path) -> Secret:
    """Resolve ``env:NAME`` or ``file:path``; raise ValueError naming the reference only."""
    kind, sep, target = ref.partition(":")
    if not sep or not target or kind not in ("env", "file"):
        raise ValueError("must be a secret reference 'env:NAME' or 'file:path', not a value")
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise ValueError(f"environment variable {target} is not set")
        return Secret(ref, value.encode("utf-8"))
    path = Path(target)
    if not path.is_absolute():
        path = base_dir / path
    try:
        data = _read_secret_file(path)
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return Secret(f"file:{path}", data, path)
