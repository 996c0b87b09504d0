"""Atomic file writes: through a hidden temporary file in the destination's folder and a
rename, so that an interrupted run never leaves a half-written file under its final name.

Standard library only: every layer of the project (models, pipeline, workflows) writes through
these helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "default_permissions"]


def default_permissions(path: str | Path, mode: int = 0o666) -> None:
    """Give a mkstemp/mkdtemp path the permissions a plain open()/mkdir() would have (mkstemp
    makes 0600, mkdtemp 0700; outputs are ordinary, shareable files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, for writers that read the
    extension, e.g. ``.nii.gz``); on success it is renamed to ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        default_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, content: Any, sort_keys: bool = True) -> None:
    """JSON, indented, one trailing newline; objects JSON does not know are written as str."""
    write_text_atomic(path, json.dumps(content, indent=2, sort_keys=sort_keys, default=str) + "\n")
