"""``recstack`` verbs of the training stage (joined into the ``recstack`` command).

``train`` (one training run + the gate), ``evaluate`` (the offline protocol), ``retrain`` (pipeline -> train -> gate, now),
``trainer`` (retrain every N simulated days until SIGTERM) and ``models list|rollback|promote``.

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from recstack.logs import configure_logging
from recstack.settings import Settings, get_settings

if TYPE_CHECKING:
    from training.train import TrainResult

app = typer.Typer()
models_app = typer.Typer(help="Registered model versions: list, rollback, promote.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)


def _settings() -> Settings:
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    logging.getLogger("faiss").setLevel(max(logging.WARNING, logging.getLogger().level))
    return s


def print_train_result(result: TrainResult, s: Settings, out: Console | None = None) -> None:
    """The evaluation table and the gate's decision."""
    out = out or Console()
    out.print(result.table_md, markup=False, highlight=False, soft_wrap=True)
    verdict = "[green]promoted to[/green]" if result.promoted else "[yellow]NOT promoted to[/yellow]"
    out.print(
        f"registered candidates v{result.candidates_version}, ranker v{result.ranker_version} "
        f"as @challenger (run {result.run_id}); {verdict} @{s.mlflow.serving_alias}: "
        f"{result.gate_reason}"
    )


@app.command()
def evaluate(
    test_fraction: Annotated[float, typer.Option(
        min=0.01, max=0.9, help="the last share of clicks (by time) that is the test part")] = 0.1,
    at: Annotated[dt.datetime | None, typer.Option(
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="the split time T instead (UTC); train is before it")] = None,
    model: Annotated[list[str] | None, typer.Option(
        help="a model to evaluate (repeatable): popularity, item_knn, als, candidates "
             "[default: all]")] = None,
) -> None:
    """The offline protocol on the lake: a temporal split, each model ranking the full
    catalogue with the user's seen items left out, NDCG@10, Recall@10/50, HR@10, MRR@50 and
    coverage@10 (training/offline.py). Writes $RECSTACK_HOME/reports/evaluate-<time>/."""
    from training.offline import MODELS, evaluate_lake

    s = _settings()
    chosen = tuple(model or MODELS)
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    when = at.replace(tzinfo=dt.UTC) if at is not None else None
    with console.status("offline evaluation") as status:
        try:
            report, folder = evaluate_lake(
                s, test_fraction=test_fraction, at=when, models=chosen,
                progress=lambda name: status.update(f"offline evaluation: fitting {name}"))
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    Console().print(report.table_md(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"split at {report.split_at}: {report.n_users:,} users, "
                  f"{report.n_targets:,} targets, {report.n_items:,} items; report in {folder}")


@app.command()
def train() -> None:
    """Train candidates + ANN index and the ranker, evaluate, register; the gate picks champion."""
    from training.train import train_and_register

    s = _settings()
    with console.status("training candidates + ranker, evaluating, logging to MLflow"):
        result = train_and_register(s)
    print_train_result(result, s)


@app.command()
def retrain(
    pipeline: Annotated[bool, typer.Option(help="run `recstack pipeline` first")] = True,
    ignore_hold: Annotated[bool, typer.Option(
        help="train even while the monitor holds retraining (broken events)")] = False,
) -> None:
    """On demand: pipeline -> materialize -> train -> evaluate -> gate."""
    from training.scheduler import retrain_once

    s = _settings()
    with console.status("retraining: pipeline, materialize, train, gate"):
        outcome = retrain_once(s, run_pipeline=pipeline, ignore_hold=ignore_hold)
    print_train_result(outcome, s)


@app.command()
def trainer(
    every_sim_days: Annotated[float | None, typer.Option(
        help="retrain every N simulated days (default RECSTACK_TRAINER__EVERY_SIM_DAYS)")] = None,
    speedup: Annotated[float | None, typer.Option(
        help="simulated seconds per wall second (default RECSTACK_TRAINER__SPEEDUP)")] = None,
    max_runs: Annotated[int | None, typer.Option(help="stop after N runs (0: never)")] = None,
) -> None:
    """Long-running: retrain every N simulated days; stops cleanly on SIGTERM/SIGINT."""
    from training.scheduler import Trainer

    s = _settings()
    cfg = s.trainer.model_copy()
    if every_sim_days is not None:
        cfg.every_sim_days = every_sim_days
    if speedup is not None:
        cfg.speedup = speedup
    if max_runs is not None:
        cfg.max_runs = max_runs
    runs = Trainer(s, cfg).run_forever()
    console.print(f"trainer stopped after {runs} run(s)")


@models_app.command("list")
def list_models() -> None:
    """Model versions (newest first) with aliases, gate decision and key holdout metrics."""
    from training import registry

    s = _settings()
    rows = registry.list_versions(registry.client_for(s), s)
    table = Table("ranker", "candidates", "aliases", "gate", "holdout", "AUC", "NDCG@10",
                  "Recall@500", "reason", title=f"models at {s.mlflow.uri}")
    for r in rows:
        table.add_row(r["ranker"], r["candidates"], r["aliases"], r["gate"], r["holdout_day"],
                      r["auc"][:6], r["ndcg_at_10"][:6], r["recall_at_500"][:6],
                      r["reason"][:60])
    Console().print(table if rows else "no ranker versions registered")


@models_app.command()
def rollback() -> None:
    """Move champion back to the previous champion (both models); history is kept."""
    from training import registry

    s = _settings()
    pair = registry.rollback(registry.client_for(s), s)
    Console().print(f"@{s.mlflow.serving_alias} -> candidates v{pair['candidates']}, "
                    f"ranker v{pair['ranker']}")


@models_app.command()
def promote(
    version: Annotated[int, typer.Argument(help="ranker version (its run's candidates follow)")],
) -> None:
    """Make ranker VERSION (and its candidates) champion, after loading both back."""
    from training import registry

    s = _settings()
    pair = registry.promote_version(registry.client_for(s), s, str(version))
    Console().print(f"@{s.mlflow.serving_alias} -> candidates v{pair['candidates']}, "
                    f"ranker v{pair['ranker']}")
