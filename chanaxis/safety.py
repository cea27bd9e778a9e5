"""What chanaxis may delete, and who may write a store: it deletes only what it can prove it made, and one writer
holds a store at a time.

A folder is a chanaxis store when its root `zarr.json` carries chanaxis's own attributes (`made_by`, or the
`chanaxis_version` + `config` of stores written before that marker). It may be replaced (`--overwrite`) only when it
holds nothing but its own files: zarr node folders, `zarr.json` and chanaxis's lock. Never the current directory, a
parent of it, the home directory or a filesystem root, whatever they hold. The same holds for a store at a URL
(`s3://bucket/run.zarr`): its keys are checked the same way, and a bucket's root is never deleted.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from .errors import ChanaxisError
from .locations import bucket_root, is_url, location

MARK = "chanaxis"          # root attrs["made_by"] of every store chanaxis creates
LOCK = ".{name}.chanaxis-lock"  # beside the store (zarr would list a file inside it): {"pid", "host", "since"}


def root_attrs(path: Path) -> dict | None:
    """The root attributes of a zarr v3 (`zarr.json`) or v2 (`.zattrs`) group at `path`, None when it is none."""
    path = location(path)
    try:
        if (path / "zarr.json").is_file():
            return json.loads((path / "zarr.json").read_text()).get("attributes", {}) or {}
        if (path / ".zgroup").is_file():
            return json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").is_file() else {}
    except (OSError, ValueError):
        return {}
    return None


def is_chanaxis_store(path: str | Path) -> bool:
    attrs = root_attrs(location(path))
    return bool(attrs) and (attrs.get("made_by") == MARK or ("chanaxis_version" in attrs and "config" in attrs))


def foreign_entries(path: Path) -> list[str]:
    """Entries of a store folder that are not the store's own (a file or folder a person or another tool put
    there): the store's own are `zarr.json` and folders that are zarr nodes (hold `zarr.json`)."""
    if is_url(path):
        return _foreign_keys(path)
    out = []
    for p in sorted(path.iterdir()):
        if p.name == "zarr.json":
            continue
        if p.is_dir() and not p.is_symlink() and _is_node_tree(p):
            continue
        out.append(p.name)
    return out


def _is_node_tree(d: Path) -> bool:
    """A zarr v3 node folder: `zarr.json` beside chunk files (`c/…`) and child node folders only."""
    if not (d / "zarr.json").is_file():
        return False
    for p in d.iterdir():
        if p.is_symlink():
            return False
        if p.is_dir() and p.name != "c" and not _is_node_tree(p):
            return False
        if p.is_file() and p.name != "zarr.json":
            return False
    return True


def _foreign_keys(path) -> list[str]:
    """`foreign_entries` of a store at a URL, from one listing of its keys: each key must be a node's `zarr.json`
    or a chunk (`c/…`) of a node, and every folder on its way a node (holding `zarr.json`)."""
    fs, root = path.fs, path.path.rstrip("/")
    keys = [k[len(root) + 1:] for k in fs.find(root)]
    nodes = {k.rsplit("/", 1)[0] if "/" in k else "" for k in keys if k.rsplit("/", 1)[-1] == "zarr.json"}
    bad = set()
    for k in keys:
        parts = k.split("/")
        ok = "" in nodes
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if parts[i - 1] == "c" and "/".join(parts[:i - 1]) in nodes:
                break  # a chunk of the node above
            if folder not in nodes:
                ok = False
                break
        else:
            ok = ok and (parts[-1] == "zarr.json" if len(parts) > 1 else k == "zarr.json")
        if not ok:
            bad.add(parts[0])
    return sorted(bad)


def protected(path: Path) -> str | None:
    """Why `path` may never be deleted (the current directory or a parent of it, home, a root), else None."""
    if is_url(path):
        return "it is the root of a bucket" if bucket_root(path) else None
    p = path.resolve()
    cwd = Path.cwd().resolve()
    if p == Path(p.anchor) or p.parent == p:
        return "it is a filesystem root"
    if p == Path.home().resolve():
        return "it is the home directory"
    if p == cwd or p in cwd.parents:
        return "it is the current directory or a parent of it"
    return None


def check_replaceable(path: Path) -> None:
    """Raise unless `path` is a chanaxis store holding only its own files, in a place that may be deleted."""
    path = location(path)
    why = protected(path)
    if why:
        raise ChanaxisError(f"chanaxis will not delete '{path}': {why}; give --out a folder of its own (e.g. "
                            f"{path / 'run.zarr'})")
    if not is_chanaxis_store(path):
        found = ", ".join(sorted(p.name for p in path.iterdir())[:4]) or "nothing"
        raise ChanaxisError(f"'{path}' is not a store chanaxis made (it holds {found}); chanaxis deletes only its own "
                            "stores: choose another --out, or move it away yourself")
    extra = foreign_entries(path)
    if extra:
        raise ChanaxisError(f"'{path}' is a chanaxis store but also holds files chanaxis did not write "
                            f"({', '.join(extra[:4])}); chanaxis will not delete them: move them out, or choose "
                            "another --out")


def remove_store(path: str | Path) -> None:
    """Delete a chanaxis store after `check_replaceable` proves it may go."""
    path = location(path)
    check_replaceable(path)
    if is_url(path):
        path.fs.rm(path.path, recursive=True)
        path.fs.invalidate_cache()
    else:
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------------- the lock
def lock_file(path: str | Path) -> Path:
    """The writer lock of the store (or output folder) at `path`: a hidden file (or object) beside it."""
    path = location(path)
    return path.parent / LOCK.format(name=path.name)


class WriterLock:
    """An advisory lock file beside a store (or any output folder): one writing process at a time.

    A lock left by a dead process on this host is taken over; one held by a live process, or by another host (whose
    processes cannot be checked from here), is refused with a message naming the holder and the file. At a URL the
    lock is an object beside the store, created only if absent (a conditional write: S3's If-None-Match)."""

    def __init__(self, path: str | Path):
        self.folder = location(path)
        self.file = lock_file(path)
        self.held = False

    def acquire(self) -> "WriterLock":
        if self.held or not self.folder.is_dir():
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                self._create(json.dumps(me))
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return self  # this process already holds it (a stage inside a study)
                if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    self._remove(holder)  # left by a process that died: take it over
                    continue
                raise ChanaxisError(
                    f"'{self.folder}' is being written by process {holder.get('pid')} on "
                    f"{holder.get('host')} (since {holder.get('since')}); wait for it to finish, or delete "
                    f"{self.file} if that process is gone") from None
            except OSError as e:
                raise ChanaxisError(f"cannot write beside '{self.folder}' ({e.strerror}); choose a writable --out"
                                    ) from None
            self.held = True
            return self
        raise ChanaxisError(f"could not take the lock {self.file}; another process keeps taking it")

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder.get("pid") == os.getpid():
                self._remove(holder)
            self.held = False

    def _remove(self, holder: dict) -> None:
        """Delete the lock file, which this code made: only when it still holds the record `holder` it was read as
        (a chanaxis lock: pid, host and start time), so nothing else that took its name is ever removed."""
        if {"pid", "host", "since"} <= set(holder) and self._holder() == holder:
            if is_url(self.file):
                self.file.fs.rm_file(self.file.path)
            else:
                self.file.unlink(missing_ok=True)

    def _create(self, text: str) -> None:
        """Write the lock only where none is (FileExistsError otherwise), in one step."""
        if not is_url(self.file):
            fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return
        fs = self.file.fs
        try:
            with fs.open(self.file.path, "xb") as f:   # s3fs: a conditional PUT (If-None-Match: *)
                f.write(text.encode())
        except (ValueError, NotImplementedError):       # a filesystem without exclusive creation
            if fs.exists(self.file.path):
                raise FileExistsError(str(self.file)) from None
            fs.pipe_file(self.file.path, text.encode())
        fs.invalidate_cache()

    def _holder(self) -> dict:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
