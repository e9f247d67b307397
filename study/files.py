"""Small file helpers shared by the data cache and the results folder.

    write_atomic(path, lambda f: f.write(b"..."))   # temporary file, fsync, rename
    write_json_atomic(path, {"a": 1})
    write_text_atomic(path, "text")                    # UTF-8, whatever the locale
    read_text(path)                                    # UTF-8 whatever the locale, or NotUTF8Error
    check_writable(folder)                             # OutputError naming the folder and the cause
    json_digest({"a": 1}, 12)                          # 'f2b0...' (SHA-256 of sorted-key JSON)

A file written atomically is either absent (or its previous version) or complete:
a process killed at any point leaves at most a `.<name>.*.tmp` file beside it,
which no reader takes for the real one. A file that cannot be written (no space left, a
read-only file system, no permission) raises `OutputError`, whose message names the file and
the cause, and leaves the previous version in place.

Every text file the study reads or writes is UTF-8, whatever the locale says.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


class NotUTF8Error(ValueError):
    """A text file the study reads that is not UTF-8; the message names the file."""


class OutputError(OSError):
    """A file or folder of the study's output that cannot be written; the message names the path
    and the cause (no space left on device, read-only file system, ...)."""


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc)


def make_folder(folder: Path) -> None:
    """Creates `folder` and its parents; `OutputError` when it cannot (a symbolic link to
    nowhere on the way, a file in its place, a read-only file system, ...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        link = next((p for p in (folder, *folder.parents) if p.is_symlink() and not p.exists()), None)
        if link is not None:
            raise OutputError(
                f"cannot create {folder}: {link} is a symbolic link to {os.readlink(link)}, which does not exist"
            ) from None
        raise OutputError(f"cannot create {folder}: {_cause(exc)}") from None


def check_writable(folder: Path) -> None:
    """`OutputError` naming `folder` and the cause when no file can be created in it (a read-only
    file system, no permission, no inode left): a probe file is created there and removed."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {_cause(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls `write` on a temporary binary file in `path`'s folder, syncs it, then renames it
    over `path` with the mode any new file gets (0666 less the umask: 0644 under the usual 022,
    like every other output; a temporary file would keep 0600); on any error the temporary file
    is removed and the error raised, an `OSError` as `OutputError` naming `path`."""
    path = Path(path)
    make_folder(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {path}: {_cause(exc)}") from exc
        raise


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask (read from
    /proc/self/status where Linux gives it, so the umask is never changed, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, payload: Any) -> None:
    """`payload` as indented JSON with sorted keys, written with `write_atomic`."""
    data = json.dumps(payload, indent=1, sort_keys=True, allow_nan=True).encode()
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    """`text` encoded as UTF-8, written with `write_atomic`."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def read_text(path: Path) -> str:
    """The text of `path` decoded as UTF-8 (a leading byte-order mark dropped), whatever the
    locale; `NotUTF8Error` naming the file and the first byte that is not UTF-8."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotUTF8Error(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None


def remove_leftovers(folder: Path) -> None:
    """Removes the temporary files of writers killed before their rename."""
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def json_digest(payload: Any, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `payload` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]
