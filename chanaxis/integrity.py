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
    """CRC-32 of an array's values in C order (its dtype as stored), read in place (no copy of the chunk)."""
    return zlib.crc32(np.ascontiguousarray(values)) & 0xFFFFFFFF


def block_crcs(x) -> "dask.array.Array":  # noqa: F821
    """One CRC per row-block of a 2-D `da.from_zarr` array chunked as the store is (one block per capture chunk)."""
    return x.map_blocks(lambda b: np.full((1, 1), crc(b), np.int64), chunks=((1,) * len(x.chunks[0]), (1,)),
                        dtype=np.int64).reshape(-1)


def margin_crcs(grp, chunk_images: int) -> list[int]:
    """The CRC of each capture chunk of `/samples/margin`, as read now."""
    from . import store
    margin = np.asarray(grp[store.samples_array("margin")][...])
    return [crc(margin[i:i + chunk_images]) for i in range(0, len(margin), chunk_images)]


def mismatched(got, want) -> np.ndarray:
    """Chunk indices whose CRC differs from the one written."""
    return np.flatnonzero(np.asarray(got, np.int64) != np.asarray(want, np.int64))


def check(run, what: str, got, want, chunk_images: int) -> None:
    """Raise naming the first chunk whose CRC differs from the one written (stores without CRCs pass)."""
    if want is None:
        return
    bad = mismatched(got, want)
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


def damaged(grp, layers: list[str], chunk_images: int) -> set[int]:
    """Every chunk of a capture whose `local` samples (of any of `layers`) or margins fail their CRC, read in one
    dask pass; empty for a store written before CRCs were recorded."""
    import dask
    import dask.array as da

    from . import store
    want = [recorded(grp, store.layer_node(l)) for l in layers]
    if any(w is None for w in want) or recorded(grp, store.SAMPLES) is None:
        return set()
    got = dask.compute(*[block_crcs(da.from_zarr(grp[store.layer_array(l, "local")])) for l in layers])
    bad = set(mismatched(margin_crcs(grp, chunk_images), recorded(grp, store.SAMPLES)).tolist())
    for g, w in zip(got, want):
        bad |= set(mismatched(g, w).tolist())
    return bad
