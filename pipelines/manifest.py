"""What the feature pipeline has processed: a small JSON file, ``<features_dir>/manifest.json``.

It records, per lake day, the fingerprint of the partition that was processed (so a daily run
recomputes only new or changed days), the parameters the tables were built with (a change
rebuilds everything), the row counts of the last run that passed validation (the reference of
the row-count swing check), how far the online store is materialized, and a short run history.
Written atomically (temporary file + rename) after each committed run, so a crashed run leaves
the previous manifest and is simply redone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines import partitions

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
HISTORY = 20  # runs kept in the manifest


@dataclass
class Manifest:
    """The pipeline's state under ``features_dir`` (see the module docstring)."""

    params: dict[str, Any] = field(default_factory=dict)
    processed: dict[str, str] = field(default_factory=dict)  # ISO lake day -> fingerprint
    last_good_rows: dict[str, int] = field(default_factory=dict)  # table -> rows, newest day
    last_good_day: str | None = None  # newest snapshot day of the last good run
    materialized_until: str | None = None  # ISO datetime: online store holds rows up to here
    runs: list[dict[str, Any]] = field(default_factory=list)

    def record_run(self, **run: Any) -> None:
        self.runs = [*self.runs, run][-HISTORY:]


def path(features_dir: str) -> str:
    return partitions.join(str(features_dir), MANIFEST_FILE)


def load(features_dir: str) -> Manifest:
    """The manifest under ``features_dir``, or an empty one (nothing processed yet)."""
    target = path(features_dir)
    if not FileSystems.exists(target):
        return Manifest()
    with FileSystems.open(target) as f:
        raw = json.loads(f.read().decode())
    known = Manifest.__dataclass_fields__
    return Manifest(**{k: v for k, v in raw.items() if k in known})


def save(features_dir: str, manifest: Manifest) -> None:
    """Write the manifest atomically."""
    target = path(features_dir)
    tmp = partitions.join(str(features_dir), f"_tmp-{MANIFEST_FILE}")
    if not FileSystems.exists(str(features_dir)):
        FileSystems.mkdirs(str(features_dir))
    with FileSystems.create(tmp) as f:
        f.write(json.dumps(asdict(manifest), indent=2, sort_keys=True).encode())
    if FileSystems.exists(target):
        FileSystems.delete([target])
    FileSystems.rename([tmp], [target])


def changed_days(lake: dict[dt.date, str], manifest: Manifest, params: dict[str, Any]
                 ) -> list[dt.date]:
    """Lake days (day -> fingerprint) that are new or changed since the manifest; every day when
    the parameters differ from those the tables were built with."""
    if manifest.params != params:
        return sorted(lake)
    return sorted(d for d, fp in lake.items() if manifest.processed.get(d.isoformat()) != fp)
