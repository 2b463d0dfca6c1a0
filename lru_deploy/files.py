"""Every file and folder lru-deploy writes, and the JSON files it reads, go through this module.

Writing a folder (a model, an export, an engine folder, a parity report) follows one protocol:

1. The destination is checked before any work: it must not be, contain or lie inside the command's own inputs,
   must not be a regular file, and may be replaced only when it is empty, missing, or a folder that the same
   kind of command wrote (its `.lru-deploy.json` marker says so, and it holds nothing the marker does not list
   apart from other folders lru-deploy wrote) -- or when the user passed `--overwrite`.
2. A lock beside the destination (`.NAME.lock`, flock) is held until the end, so a second writer of the same
   folder fails at once with a clear message instead of racing.
3. The content is written into a temporary folder beside the destination (`.NAME.lru-deploy-tmp-XXXX`, same
   file system) and renamed into place only when the body finished; on any error it is removed.
4. Temporary folders that a killed run left behind (their owner's pid is gone, or older than a day) are swept
   the next time the same destination is written, and the sweep is logged.

Single files (arrays, JSON) are written through an open handle to a temporary file beside the target and
renamed over it, so a name without a `.npy` suffix is written as given.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from .errors import InputError, OutputError

log = logging.getLogger(__name__)

MARKER = ".lru-deploy.json"
TMP_TAG = ".lru-deploy-tmp-"
STALE_AFTER_S = 24 * 3600  # a temporary folder this old is stale even if its pid was reused


# ---------------------------------------------------------------- reading

def read_json(path: str | os.PathLike, what: str = "file", error: type = InputError) -> dict:
    """The one JSON reader: a missing, unreadable, non-UTF-8 or malformed file is one clear `error`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        obj = json.loads(text)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist", "pass an existing file") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a JSON file", "pass the JSON file itself") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start}): it is not a JSON file",
                         "pass the JSON file lru-deploy or your editor wrote") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e}", "fix the file or write it again") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}", "check the path and its permissions") from None
    if not isinstance(obj, dict):
        raise error(f"{what} {path} holds a JSON {type(obj).__name__}, not an object",
                         "the file must hold one JSON object {...}")
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when `path` is `folder` or lies inside it (both resolved)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


# ---------------------------------------------------------------- single files

def atomic_write(path: str | os.PathLike, writer: Callable, *, what: str = "output file", text: bool = False) -> Path:
    """writer(f) writes into an open file (binary, or text when `text`); the file is renamed over `path` only
    when writer returns. Any suffix is kept as given. A folder at `path` is refused; nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder", "pass a file name, e.g. out.npy")
    parent = path.parent if str(path.parent) else Path(".")
    _make_parent(parent, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise _write_error(e, path, what) from None
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            writer(f)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(e, path, what) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj, what: str = "JSON file") -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), what=what, text=True)


# ---------------------------------------------------------------- folders

def check_destination(dest: str | os.PathLike, kind: str, *, reads: Iterable[str | os.PathLike] = (),
                      overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse a destination that would destroy something: see the module docstring. Returns it resolved."""
    dest = Path(dest).resolve()  # '.', '..' and trailing slashes get their real name here
    if dest.parent == dest:
        raise OutputError(f"{flag} {dest} is the file system root", f"pass a folder for {flag}")
    for anc in [dest, *dest.parents]:
        if anc.exists() and not anc.is_dir():
            where = "is a file" if anc == dest else f"lies under {anc}, which is a file"
            raise OutputError(f"{flag} {dest} {where}, not a folder", f"choose another {flag}")
    for r in reads:
        r = Path(r).resolve()
        if inside(r, dest):
            raise OutputError(f"{flag} {dest} {'is' if r == dest else 'contains'} this command's input {r}; "
                              f"writing there would delete it", f"choose an {flag} folder outside {r}")
        if r.is_dir() and inside(dest, r):
            raise OutputError(f"{flag} {dest} lies inside this command's input {r}",
                              f"choose an {flag} folder outside {r}")
    if dest.is_dir() and not overwrite:
        foreign = foreign_entries(dest, kind)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            made = _marker(dest)
            whose = (f"it was written by `{made['kind']}`, not `{kind}`" if made and made.get("kind") != kind
                     else f"it holds {shown}, which lru-deploy {kind} did not write")
            raise OutputError(f"{flag} {dest} exists and is not empty: {whose}",
                              f"choose another {flag}, or pass --overwrite to replace the folder and everything in it")
    return dest


def foreign_entries(folder: Path, kind: str) -> list[str]:
    """Entries of `folder` that a rewrite by `kind` must not delete silently ([] = safe to replace)."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return []
    made = _marker(folder)
    if not made or made.get("kind") != kind:
        return names
    listed = set(made.get("entries", [])) | {MARKER}
    return [n for n in names if n not in listed and not (folder / n / MARKER).is_file()]


@contextlib.contextmanager
def staged_dir(dest: str | os.PathLike, kind: str, *, reads: Iterable[str | os.PathLike] = (),
               overwrite: bool = False, flag: str = "--out", mark: bool = True) -> Iterator[Path]:
    """Write the folder `dest` whole or not at all (the protocol in the module docstring). The body fills the
    yielded temporary folder; on success it replaces dest, on any error it is removed and dest is untouched.
    mark=False writes no marker: a folder of user data (a model) is then never replaced without --overwrite."""
    dest = check_destination(dest, kind, reads=reads, overwrite=overwrite, flag=flag)
    _make_parent(dest.parent, flag)
    with _lock(dest, flag):
        check_destination(dest, kind, reads=reads, overwrite=overwrite, flag=flag)  # again, under the lock
        sweep_stale(dest)
        tmp = _make_temp_dir(dest, flag)
        try:
            yield tmp
            _write_marker(tmp, kind if mark else None)
            _replace_dir(tmp, dest, flag)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(e, dest, flag) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def sweep_stale(dest: Path) -> list[Path]:
    """Remove temporary folders of `dest` left by runs that died (pid gone on this host, or a day old)."""
    removed = []
    for p in dest.parent.glob(f".{dest.name}{TMP_TAG}*"):
        owner = _marker(p, name=".owner.json") or {}
        pid, host, started = owner.get("pid"), owner.get("host"), owner.get("started", 0)
        alive = host == socket.gethostname() and isinstance(pid, int) and _pid_alive(pid)
        if not p.is_dir() or (alive and time.time() - started < STALE_AFTER_S):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if removed:
        log.warning("removed %d stale temporary folder(s) left by an interrupted run: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed


def _marker(folder: Path, name: str = MARKER) -> Optional[dict]:
    try:
        obj = json.loads((folder / name).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _write_marker(tmp: Path, kind: Optional[str]) -> None:
    (tmp / ".owner.json").unlink(missing_ok=True)
    if kind is None:
        return
    entries = sorted(p.name for p in tmp.iterdir())
    (tmp / MARKER).write_text(json.dumps({"kind": kind, "entries": entries,
                                          "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def _make_temp_dir(dest: Path, flag: str) -> Path:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{TMP_TAG}", dir=dest.parent))
    except OSError as e:
        raise _write_error(e, dest, flag) from None
    os.chmod(tmp, 0o777 & ~_umask())
    (tmp / ".owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": time.time()}))
    return tmp


def _replace_dir(tmp: Path, dest: Path, flag: str) -> None:
    """Rename tmp to dest; an existing dest is moved aside first and removed only after the rename."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}{TMP_TAG}old-", dir=dest.parent))
    os.rename(dest, old / dest.name)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old / dest.name, dest)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _lock(dest: Path, flag: str) -> Iterator[None]:
    """An exclusive, non-blocking flock on `.NAME.lock` beside dest, removed when released."""
    lock = dest.parent / f".{dest.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _write_error(e, dest, flag) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{flag} {dest} is being written by another lru-deploy process (pid {other})",
                              "wait for it to finish, or choose another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a lock file a releasing process unlinked
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _make_parent(parent: Path, what: str) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(e, parent, what) from None


def _write_error(e: OSError, path: Path, what: str) -> OutputError:
    reason = {errno.EACCES: "permission denied", errno.EROFS: "the file system is read-only",
              errno.ENOSPC: "the disk is full", errno.EEXIST: "a file is in the way",
              errno.ENOTDIR: "a parent of it is a file, not a folder"}.get(e.errno, e.strerror or str(e))
    return OutputError(f"cannot write {what} {path}: {reason}",
                       "choose a destination on a writable file system, with free space, whose parents are folders")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def default_file_mode() -> int:
    """The mode a plain open() would give a new file (0o644 under the usual umask)."""
    return 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
