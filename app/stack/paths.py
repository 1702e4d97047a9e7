"""Where the native stack keeps its rendered configs, logs, pids and data (all under RECSTACK_HOME)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from recstack.settings import REPO_ROOT, Settings

RULES_FILE = REPO_ROOT / "monitoring" / "rules.yml"


@dataclass(frozen=True)
class StackPaths:
    """Rendered configs under ``run_dir``, logs under ``logs_dir``, data under ``root``."""

    run_dir: Path
    logs_dir: Path
    supervisord_conf: Path
    supervisord_pid: Path
    supervisord_log: Path
    secret: Path
    scale_file: Path
    pids_file: Path
    redis_conf: Path
    redis_data: Path
    nginx_dir: Path
    nginx_conf: Path
    prometheus_dir: Path
    prometheus_conf: Path
    prometheus_targets: Path
    prometheus_rules: Path
    prometheus_data: Path
    mlflow_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> "StackPaths":
        run, logs = settings.run_dir, settings.logs_dir
        return cls(
            run_dir=run,
            logs_dir=logs,
            supervisord_conf=run / "supervisord.conf",
            supervisord_pid=run / "supervisord.pid",
            supervisord_log=logs / "supervisord.log",
            secret=run / "supervisor.secret",
            scale_file=run / "scale.json",
            pids_file=run / "pids.json",
            redis_conf=run / "redis.conf",
            redis_data=settings.root / "redis",
            nginx_dir=run / "nginx",
            nginx_conf=run / "nginx" / "nginx.conf",
            prometheus_dir=run / "prometheus",
            prometheus_conf=run / "prometheus" / "prometheus.yml",
            prometheus_targets=run / "prometheus" / "targets" / "api.json",
            prometheus_rules=RULES_FILE,
            prometheus_data=settings.root / "prometheus",
            mlflow_dir=settings.mlflow_dir,
        )

    def targets_file(self, service: str) -> Path:
        """The Prometheus file_sd targets of ``service``'s job (``api.json``, ``ranking.json``...)."""
        return self.prometheus_targets.parent / f"{service}.json"

    def program_log(self, program: str) -> Path:
        return self.logs_dir / f"{program}.log"

    def make_dirs(self) -> None:
        for d in (self.run_dir, self.logs_dir, self.redis_data, self.nginx_dir,
                  self.prometheus_targets.parent, self.prometheus_data, self.mlflow_dir / "artifacts"):
            d.mkdir(parents=True, exist_ok=True)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically write ``text`` to ``path`` unless it already holds it; True if it changed.

    Atomic (write + rename) because Prometheus watches the file_sd targets file and nginx may
    reload at any time: neither must ever read a half-written file.
    """
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True
