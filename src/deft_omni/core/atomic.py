"""The one atomic file and folder writer of deft_omni.

Every file or folder the project writes for someone else to read (adapter folders, shard
manifests, checkpoints, sample grids, sidecars, caches) goes through here, so that a reader
never sees a half-written file and a crash never leaves a broken one in place:

* the content goes to a temporary sibling first, is flushed and ``fsync``-ed, then renamed over
  the target (``os.replace``, atomic on one filesystem), and the parent folder is ``fsync``-ed
  so the rename itself survives a power cut;
* files and folders get the process umask's modes, as any other file would (``tempfile``'s
  0600/0700, or safetensors' 0600, would keep a teammate from reading a shared data set);
* temporary names are recognisable, ``.<name>.deft-tmp-<pid>-<token>``, so that
  :func:`clean_stale` can remove those an interrupted process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

TMP_MARK = ".deft-tmp-"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.deft-tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")


def temp_sibling(target: PathLike) -> Path:
    """A fresh, recognisable temporary path beside ``target`` (not created)."""
    target = Path(target)
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def parse_temp_name(name: str) -> Optional[tuple[str, int]]:
    """(target name, writer pid) of a temporary made here, else None."""
    m = _TMP_RE.match(name)
    return (m.group("name"), int(m.group("pid"))) if m else None


def fsync_dir(path: PathLike) -> None:
    """Make renames inside ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask: from /proc where it can be read without changing it (another thread may
    be creating files), else by setting it and restoring it at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle_tree(root: Path) -> None:
    """fsync every file and folder of a staged tree, and give each the umask's mode: some
    writers (safetensors' ``save_file``) chmod their file to 0600 whatever the umask."""
    file_mode, dir_mode = 0o666 & ~umask(), 0o777 & ~umask()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, file_mode)
                _fsync_file(path)
        os.chmod(dirpath, dir_mode)
        fsync_dir(dirpath)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; on success it replaces ``target``.

    For writers that take a path (PIL's ``save``, safetensors' ``save_file``, ``torch.save``).
    The temporary is created empty first (umask modes) and removed on any error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # a writer may have chmod-ed it (safetensors: 0600)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(target: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO[Any]]:
    """Yield an open file whose content replaces ``target`` when the block ends without error."""
    if "w" not in mode:
        raise ValueError(f"atomic_file writes a new file; mode must contain 'w', got {mode!r}")
    with atomic_path(target) as tmp:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()


def write_bytes(target: PathLike, data: bytes) -> Path:
    with atomic_file(target, "wb") as fh:
        fh.write(data)
    return Path(target)


def write_text(target: PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(target, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(target)


def write_json(target: PathLike, obj: Any, indent: Optional[int] = 2, **dumps: Any) -> Path:
    text = json.dumps(obj, indent=indent, **dumps)
    return write_text(target, text + ("\n" if indent is not None else ""))


@contextlib.contextmanager
def atomic_dir(target: PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it becomes ``target``.

    Every file in it is ``fsync``-ed before the rename.  An existing ``target`` is replaced when
    ``replace`` (moved aside under a temporary name, then removed), else ``FileExistsError``.
    On any error the staging folder is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(target)
    os.mkdir(staging, 0o777)
    try:
        yield staging
        _settle_tree(staging)
        publish_dir(staging, target, replace=replace)
    except BaseException:
        _remove(staging)
        raise


def publish_dir(staging: PathLike, target: PathLike, replace: bool = True) -> None:
    """Move a complete folder ``staging`` to ``target`` (same filesystem), replacing it if asked."""
    staging, target = Path(staging), Path(target)
    old = None
    if os.path.lexists(target):
        if not replace:
            raise FileExistsError(f"{target} exists")
        old = temp_sibling(target)
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError as err:
        # Another writer published first (a non-empty folder cannot be renamed over).
        if not replace and os.path.lexists(target):
            raise FileExistsError(f"{target} exists") from err
        raise
    fsync_dir(target.parent)
    if old is not None:
        _remove(old)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale(folder: PathLike, *, started_before: Optional[float] = None, own: bool = True,
                recursive: bool = False) -> list[Path]:
    """Remove temporaries of this module left in ``folder``; returns what was removed.

    A temporary is stale when its writer process is gone, when it is this process's own
    (``own``: call this only where no write of this process is in flight), or when it was last
    changed before ``started_before`` (a time stamp: say, the start of this run; a temporary that
    old belongs to an earlier run even if its pid was reused).  ``recursive`` also looks into
    sub-folders (not into temporaries)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    me = os.getpid()
    for entry in list(folder.iterdir()):
        parsed = parse_temp_name(entry.name)
        if parsed is None:
            if recursive and entry.is_dir() and not entry.is_symlink():
                removed += clean_stale(entry, started_before=started_before, own=own, recursive=True)
            continue
        pid = parsed[1]
        try:
            mtime = entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        old = started_before is not None and mtime < started_before
        if (own and pid == me) or not _pid_alive(pid) or old:
            _remove(entry)
            removed.append(entry)
    return removed


def now() -> float:
    """A time stamp to pass as ``started_before`` later (same clock as file mtimes)."""
    return time.time()


__all__ = [
    "TMP_MARK",
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "clean_stale",
    "fsync_dir",
    "now",
    "parse_temp_name",
    "publish_dir",
    "temp_sibling",
    "write_bytes",
    "write_json",
    "write_text",
]
