"""Chunk checksums: capture records a CRC-32 of every chunk's values as it writes them; readers compare.

zarr reads a missing chunk file as its fill value (zeros) and an uncompressed chunk with changed bytes as other
numbers, both without a word: the checksum turns either into an error that names the chunk and says how to repair
it (rerunning the capture rewrites exactly the damaged chunks).
"""
from __future__ import annotations

import zlib

import numpy as np

from .errors import ChanaxisError

CRC = "chunk_crc"  # per layer: CRC-32 of each chunk of `local`; under /samples: of each chunk of `margin`


def crc(values) -> int:
    """CRC-32 of an array's values in C order (its dtype as stored)."""
    return zlib.crc32(np.ascontiguousarray(values).tobytes()) & 0xFFFFFFFF


def block_crcs(x) -> "dask.array.Array":  # noqa: F821
    """A dask array of one CRC per row-block of `x` (a `da.from_zarr` array chunked as the store is)."""
    import dask.array as da
    n_blocks = len(x.chunks[0])
    return x.map_blocks(lambda b: np.full((1, 1), crc(b), np.int64), chunks=((1,) * n_blocks, (1,)),
                        dtype=np.int64).reshape(-1) if x.ndim == 2 else da.map_blocks(
        lambda b: np.full(1, crc(b), np.int64), x, chunks=((1,) * n_blocks,), dtype=np.int64)


def check(run, what: str, got, want, chunk_images: int) -> None:
    """Raise naming the first chunk whose CRC differs from the one written (stores without CRCs pass)."""
    if want is None:
        return
    got, want = np.asarray(got, np.int64), np.asarray(want, np.int64)
    bad = np.flatnonzero(got != want)
    if bad.size:
        k = int(bad[0])
        raise ChanaxisError(f"chunk {k} of {what} in '{run}' (images {k * chunk_images}–{(k + 1) * chunk_images - 1}"
                            f"{f', and {bad.size - 1} more' if bad.size > 1 else ''}) is missing or damaged: its "
                            "checksum differs from the one written; rerun the same `chanaxis capture` command, "
                            "which rewrites only the damaged chunks")


def recorded(grp, node: str):
    """The CRCs recorded under `node`, or None for a store written before chanaxis recorded them."""
    key = f"{node}/{CRC}"
    return np.asarray(grp[key][...], np.int64) if key in grp else None
