"""Writing files without ever losing one: refuse to replace unless asked, write then rename.

Every file arflows writes goes through :func:`atomic_path`: the content is written to a hidden
temporary name in the same folder and renamed into place only when complete, so a crash or a
full disk leaves an existing file whole. :func:`check_new` is the refusal users meet first: an
existing file is replaced only when the caller says so (``--force`` on the command line).
Devices such as ``/dev/null`` or ``/dev/stdout`` are written in place: there is nothing there
to lose, and a rename onto them is impossible.
"""

from __future__ import annotations

__all__ = ["FileExists", "atomic_path", "check_new", "is_device"]

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


class FileExists(ValueError):
    """An output exists and replacing it was not asked for."""


def is_device(path: Path) -> bool:
    """Whether ``path`` exists and is not a regular file or folder (a device, a pipe)."""
    return path.exists() and not path.is_file() and not path.is_dir()


def check_new(path: str | os.PathLike, *, force: bool = False, flag: str = "--force") -> Path:
    """Refuses an output path whose file exists, unless ``force``.

    Args:
        path: Where a file will be written.
        force: Replace an existing file.
        flag: How the caller asks for replacement, named in the error.

    Returns:
        The path.

    Raises:
        FileExists: When a regular file is there and ``force`` is false.
        ValueError: When a folder is there.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    if path.is_file() and not force:
        raise FileExists(f"{path} exists; add {flag} to replace it")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed onto ``path`` on success.

    The temporary file sits in the same folder (a rename within one file system is atomic)
    and is removed if the block raises. For a device (``/dev/null``) the path itself is
    given.

    Args:
        path: The final file.

    Yields:
        The path to write.
    """
    path = Path(path)
    if is_device(path):
        yield path
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
