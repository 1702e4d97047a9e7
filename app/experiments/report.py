"""One experiment's report folder: raw CSV, PNG plots, a Markdown page and ``summary.json``.

``ReportFolder.create(settings, "scale")`` makes ``$RECSTACK_HOME/reports/scale-<UTC stamp>/``;
the experiment adds tables and figures, then ``finish`` writes ``report.md`` (the machine, the
software versions, the settings, every figure embedded) and ``summary.json`` (figures with
units in the key names, plus the machine). ``reports/<kind>-latest`` points at the newest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recstack.machine import load_average, machine_info
from recstack.settings import Settings


@dataclass
class ReportFolder:
    """Accumulates the parts of one report; nothing is half-written if the experiment fails."""

    kind: str
    path: Path
    title: str
    started: dt.datetime
    sections: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings, kind: str, title: str | None = None) -> ReportFolder:
        started = dt.datetime.now(dt.UTC)
        path = settings.reports_dir / f"{kind}-{started:%Y%m%dT%H%M%SZ}"
        path.mkdir(parents=True, exist_ok=True)
        return cls(kind, path, title or kind, started)

    def csv(self, name: str, frame: Any) -> Path:
        """Writes a pandas DataFrame (raw results) as ``<name>.csv``."""
        out = self.path / f"{name}.csv"
        frame.to_csv(out, index=False)
        self.files.append(out.name)
        return out

    def figure(self, name: str, fig: Any, caption: str = "") -> Path:
        """Saves a matplotlib figure as ``<name>.png`` and embeds it in the page."""
        out = self.path / f"{name}.png"
        fig.savefig(out, dpi=110, bbox_inches="tight")
        self.files.append(out.name)
        self.sections.append(f"![{caption or name}]({out.name})\n\n{caption}".rstrip())
        return out

    def text(self, markdown: str) -> None:
        """A paragraph, list or table of the page, in order."""
        self.sections.append(markdown.strip())

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
        """A Markdown table of ``rows`` (dicts), floats with 3 significant digits."""
        if not rows:
            return
        columns = columns or list(rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        self.sections.append("\n".join(lines))

    def finish(self, summary: dict[str, Any], settings_used: dict[str, Any] | None = None) -> Path:
        """Writes ``report.md`` and ``summary.json``; returns the folder."""
        machine = machine_info()
        load = load_average()
        finished = dt.datetime.now(dt.UTC)
        head = [
            f"# {self.title}",
            f"Run {self.started:%Y-%m-%d %H:%M:%S} to {finished:%H:%M:%S} UTC on "
            f"`{machine['hostname']}`: {machine['cpu']}, {machine['cores']} cores, "
            f"{machine['memory_gib']} GiB, Python {machine['python']}"
            + (f"; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
               if load else "")
            + ". The load generator shares these cores with the services.",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v),
        ]
        tail = []
        if settings_used:
            tail = ["## Settings", "```json", json.dumps(settings_used, indent=2, default=str),
                    "```"]
        page = "\n\n".join(head + self.sections + tail) + "\n"
        (self.path / "report.md").write_text(page)
        full = {"kind": self.kind, "started": self.started.isoformat(),
                "finished": finished.isoformat(), **summary, "machine": machine,
                "settings": settings_used or {}}
        (self.path / "summary.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
        latest = self.path.parent / f"{self.kind}-latest"
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            os.symlink(self.path.name, latest)
        except OSError:
            pass
        return self.path


def folders(settings: Settings, kind: str) -> list[Path]:
    """The report folders of ``kind``, oldest first (their names end in a UTC stamp)."""
    return sorted(p for p in settings.reports_dir.glob(f"{kind}-*")
                  if p.is_dir() and not p.is_symlink())


def latest(settings: Settings, kind: str) -> Path | None:
    """The newest report folder of ``kind``, or None."""
    found = folders(settings, kind)
    return found[-1] if found else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
