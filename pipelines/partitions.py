"""Day-partitioned tables through ``apache_beam.io.filesystems`` (local paths or remote URIs).

A feature table ``<features_dir>/user_features.parquet`` is a *directory* of one Parquet file per
snapshot day, ``part-YYYY-MM-DD.parquet`` (labels: per impression day). Why a directory and not
one compacted file: an incremental run rewrites only the days it recomputes, never history, and
each day's file is replaced atomically (written under a temporary name, then renamed). Feast's
file offline store reads the directory as one dataset (``dask.dataframe.read_parquet`` over a
directory), and so do pandas and pyarrow; files whose names start with ``_`` or ``.`` (our
temporaries) are ignored by all three. No hive ``key=value`` directory names, so no extra
partition column appears in the data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import re
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

_PART = re.compile(r"part-(\d{4}-\d{2}-\d{2})\.parquet$")
_LAKE_DAY = re.compile(r"date=(\d{4}-\d{2}-\d{2})$")


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a remote URI."""
    return FileSystems.join(str(base), *parts)


def partition_path(table_dir: str, day: dt.date) -> str:
    """The file holding ``day``'s rows of the table at ``table_dir``."""
    return join(table_dir, f"part-{day.isoformat()}.parquet")


def list_partitions(table_dir: str) -> dict[dt.date, str]:
    """Day -> file of every partition under ``table_dir`` (empty when it does not exist)."""
    try:
        found = FileSystems.match([join(table_dir, "part-*.parquet")])[0].metadata_list
    except BeamIOError:
        return {}
    out = {}
    for meta in found:
        m = _PART.search(meta.path)
        if m:
            out[dt.date.fromisoformat(m.group(1))] = meta.path
    return dict(sorted(out.items()))


def write_table_atomic(table: pa.Table, path: str) -> None:
    """Write ``table`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to ``_tmp-<uuid>-<name>`` beside it first (ignored by readers), then a rename.
    """
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    directory, name = path.rsplit("/", 1)
    tmp = join(directory, f"_tmp-{uuid.uuid4().hex[:8]}-{name}")
    with FileSystems.create(tmp) as f:
        f.write(buffer.getvalue())
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def read_table(path: str) -> pa.Table:
    """One Parquet file (any filesystem Beam knows) into memory."""
    with FileSystems.open(path) as f:
        return pq.read_table(io.BytesIO(f.read()))


def replace_partitions(staged_dir: str, table_dir: str, first: dt.date, last: dt.date) -> int:
    """Make ``table_dir``'s days ``first..last`` exactly the staged ones; other days untouched.

    Old partitions of the range without a staged replacement are deleted (a recomputed day may
    have become empty). Returns the partitions moved in.
    """
    staged = list_partitions(staged_dir)
    old = {d: p for d, p in list_partitions(table_dir).items() if first <= d <= last}
    if not FileSystems.exists(table_dir):
        FileSystems.mkdirs(table_dir)
    for day, path in staged.items():
        target = partition_path(table_dir, day)
        if FileSystems.exists(target):
            FileSystems.delete([target])
        FileSystems.rename([path], [target])
        old.pop(day, None)
    if old:
        FileSystems.delete(list(old.values()))
    return len(staged)


def lake_partitions(lake_dir: str) -> dict[dt.date, list[tuple[str, int]]]:
    """Day -> [(part file, size in bytes)] of the event lake ``<lake>/events/date=*/part-*``."""
    pattern = join(str(lake_dir), "events", "date=*", "part-*.parquet")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except BeamIOError:
        return {}
    out: dict[dt.date, list[tuple[str, int]]] = {}
    for meta in found:
        directory = meta.path.rsplit("/", 1)[0]
        m = _LAKE_DAY.search(directory)
        if m:
            out.setdefault(dt.date.fromisoformat(m.group(1)), []).append(
                (meta.path, meta.size_in_bytes))
    return {d: sorted(files) for d, files in sorted(out.items())}


def fingerprint(files: list[tuple[str, int]]) -> str:
    """A short digest of a lake partition's file names and sizes: changes when files are added,
    removed or rewritten with other content; stays when the same batch is rewritten (the lake's
    writes are idempotent per batch key, so equal names and sizes mean equal events)."""
    digest = hashlib.sha1()
    for path, size in sorted(files):
        digest.update(f"{path.rsplit('/', 1)[-1]}:{size}\n".encode())
    return digest.hexdigest()[:16]
