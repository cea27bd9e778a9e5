"""Where a run store or study lives: a local folder (`pathlib.Path`) or any fsspec URL (`s3://bucket/study`,
`gs://…`, `memory://…`) as a `upath.UPath`, which has pathlib's methods over the URL's filesystem.

Everything that names a store or study folder goes through `location`, so the same code reads and writes both.
Credentials and endpoints come from where fsspec's filesystems take them: for S3 the usual AWS variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, …) or fsspec's configuration files
(`~/.config/fsspec/s3.json`); dask workers inherit the same environment.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ChanaxisError


def is_url(path) -> bool:
    """Whether `path` names a place on an fsspec filesystem other than the local one (it has a `scheme://`)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def location(path):
    """`path` as a `Path` (local, `file://` stripped) or a `UPath` (a URL); a URL whose filesystem is not
    installed is a one-line error naming the package to install."""
    if hasattr(path, "protocol") and hasattr(path, "fs"):
        return path  # already a UPath
    s = os.fspath(path) if not isinstance(path, str) else path
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    if not is_url(s):
        return Path(s)
    from upath import UPath
    try:
        p = UPath(s)
        p.fs  # noqa: B018 - instantiating the filesystem is what finds a missing package
    except ImportError as e:
        scheme = s.split("://", 1)[0]
        pkg = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
        hint = f"pip install {pkg}" + (" (or chanaxis[s3])" if pkg == "s3fs" else "") if pkg else str(e)
        raise ChanaxisError(f"'{s}' needs the filesystem for {scheme}:// ({hint})") from None
    except ValueError as e:
        raise ChanaxisError(f"'{s}' is not a location chanaxis can open ({e})") from None
    return p


def absolute(path):
    """A local path made absolute (symlinks resolved), a URL as it is: what is recorded so that the place can be
    found again from any working directory."""
    p = location(path)
    return p if is_url(p) else p.resolve()


def bucket_root(path) -> bool:
    """Whether a URL names the root of its bucket or container (nothing under it may ever be deleted whole)."""
    p = location(path)
    return is_url(p) and "/" not in p.path.strip("/")


__all__ = ["absolute", "bucket_root", "is_url", "location"]
