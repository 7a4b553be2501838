"""Writing artifacts: the one atomic writer and the one file digest every module uses.

Atomic: a file is written under a temporary name in its own folder and renamed into place, so
a reader (or a crash, or Ctrl-C) never leaves half a checkpoint. The temporary file is created
with mode 0666 minus the umask, as `open()` would create the final file, so artifacts are as
readable to a group or a shared machine as the user's umask says (0644 under 022), not 0600 as
`tempfile.mkstemp` would make them. Torch-free: the CLI imports it before any heavy module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from udaseg.errors import UdasegError

NEW_FILE_MODE = 0o666  # what open(path, "w") asks for; the kernel removes the umask's bits


def new_temporary(path: str | Path) -> Path:
    """An empty, new file `.NAME.RANDOM.tmp` beside `path` (created exclusively: never someone else's).

    For a writer that stays open across calls (predict's video): it renames the file onto `path`
    with `os.replace` when complete, or unlinks it. Everything else uses `atomic_path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on success it replaces `path`, on error it is removed.

    For writers that open the file themselves (torch.save, h5py, matplotlib, TorchScript). The name
    ends in `.tmp`, so a writer that picks a format from the suffix must be told the format.
    """
    path = Path(path)
    tmp = new_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_writable(folder: str | Path, fix: str) -> None:
    """Refuse an output folder that cannot be written before a stage spends any time on it.

    Probes the folder, or its nearest existing ancestor (creating nothing that stays), by making
    and removing a temporary sub-folder: permission bits, read-only mounts and root-only pseudo
    file systems all answer the same way, which `os.access` does not (it says yes to root).
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UdasegError(f"{folder}: cannot write there ({probe} is a file, not a folder); {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".udaseg-write-test-", dir=probe))
    except OSError as err:
        raise UdasegError(f"{folder}: cannot write there ({err.strerror}); {fix}") from None
