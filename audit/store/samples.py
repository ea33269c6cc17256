"""``samples.parquet``: every sample a run covers, and the digest of its image once read.

A run lists its samples when it starts (from the dataset's labels: no image is decoded then),
so the digests are filled in from the stored rows, which carry them, when a process of the run
finishes; an import writes the list whole. Lists written by earlier versions hold only
``sample_id`` and stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from audit.store.schema import IMAGE_HASH, SAMPLES
from audit.store.tables import RunStore, write_parquet_atomic

SAMPLES_FILE = "samples.parquet"


def read_samples(store: RunStore) -> pd.DataFrame | None:
    """``sample_id, image_sha256`` as stored (``None`` without a readable list; the digest
    column is null where not known)."""
    path = store.root / SAMPLES_FILE
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):  # absent or damaged: the list is an aid, the rows are the data
        return None
    if "sample_id" not in frame.columns:
        return None
    if IMAGE_HASH not in frame.columns:
        frame[IMAGE_HASH] = None
    frame = frame[["sample_id", IMAGE_HASH]].astype(object)
    frame["sample_id"] = frame["sample_id"].astype(str)
    return frame.where(frame.notna(), None)


def write_samples(
    store: RunStore, sample_ids: Iterable[str], hashes: pd.DataFrame | None = None
) -> None:
    """List ``sample_ids`` with the digests known for them: ``hashes`` (``sample_id,
    image_sha256``) over those of the list already stored."""
    frame = pd.DataFrame({"sample_id": [str(s) for s in sample_ids]})
    # The digests given win over those already listed.
    known = [f for f in (hashes, read_samples(store)) if f is not None and not f.empty]
    if known:
        digests = _one_per_sample(pd.concat(known, ignore_index=True))
        frame = frame.merge(digests, on="sample_id", how="left")
    else:
        frame[IMAGE_HASH] = None
    frame = frame[SAMPLES.columns()].astype({"sample_id": "string", IMAGE_HASH: "string"})
    write_parquet_atomic(store.root / SAMPLES_FILE, frame)


def stored_image_hashes(store: RunStore) -> pd.DataFrame:
    """``sample_id, image_sha256`` from the run's rows (samples whose image was read)."""
    found = []
    for table in ("generations", "classifications"):
        if IMAGE_HASH in _columns_of_any_part(store, table):
            found.append(store.read(table, columns=["sample_id", IMAGE_HASH]))
    if not found:
        return pd.DataFrame(columns=["sample_id", IMAGE_HASH])
    return _one_per_sample(pd.concat(found, ignore_index=True))


def record_image_hashes(store: RunStore) -> None:
    """Fill the list's digests from the stored rows (a run without a list keeps none)."""
    listed = read_samples(store)
    if listed is None:
        return
    hashes = stored_image_hashes(store)
    if not hashes.empty:
        write_samples(store, listed["sample_id"], hashes)


def _one_per_sample(frame: pd.DataFrame) -> pd.DataFrame:
    known = frame[frame[IMAGE_HASH].notna()]
    known = known.astype({"sample_id": str, IMAGE_HASH: str})
    return known.drop_duplicates("sample_id")[["sample_id", IMAGE_HASH]]


def _columns_of_any_part(store: RunStore, table: str) -> set[str]:
    import pyarrow.parquet as pq

    names: set[str] = set()
    for part in store.parts(table):
        try:
            names |= set(pq.read_schema(part).names)
        except (OSError, ValueError):
            continue  # a damaged part is reported by the reads that need it
    return names


def sample_table(store: RunStore, axes: Iterable[str]) -> pd.DataFrame:
    """One row per sample the run's rows name: ``sample_id``, ``image_sha256`` (null where not
    known) and the group columns ``axes`` (as the rows hold them)."""
    wanted = ["sample_id", IMAGE_HASH, *axes]
    found = []
    for table in ("generations", "classifications"):
        present = [c for c in wanted if c in _columns_of_any_part(store, table)]
        if "sample_id" in present:
            found.append(store.read(table, columns=present))
    frame = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    frame = frame.reindex(columns=wanted).astype(object)
    frame = frame.where(frame.notna(), None)
    frame["sample_id"] = frame["sample_id"].astype(str)
    # A sample's digest from whichever of its rows has one (rows of older versions lack it).
    frame["_no_digest"] = frame[IMAGE_HASH].isna()
    frame = frame.sort_values("_no_digest", kind="stable").drop_duplicates("sample_id")
    return frame.drop(columns="_no_digest").sort_values("sample_id").reset_index(drop=True)
