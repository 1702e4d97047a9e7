"""The compose stack's one-shot bootstrap: build only what the stack lacks, keep the rest.

``docker compose up`` runs this on every start (service ``bootstrap``). It looks at what the
volumes hold and plans from that:

- an empty lake (no event file at all): simulate the world, then run the feature pipeline. A
  lake with files is never simulated again: ``recstack simulate`` replaces the lake, and that
  would delete the events that came through ``POST /events`` and the sink.
- a lake without valid offline feature tables: the feature pipeline (Beam, then Feast).
- feature tables, but an online store without item features or with a view behind the
  offline tables (a lost, new or restored Redis volume): materialize every view again from the
  offline tables; no simulation, no Beam.
- no ``@champion`` for both registered models: train (the promotion gate decides).

When nothing is missing it says what it kept and exits 0 in a few seconds. An unreachable Redis
or MLflow is an error (exit 1), never taken for "empty": a transient failure must not start a
bootstrap over a stack that has state.

    python /opt/recstack/docker/bootstrap.py            # in the image (compose: bootstrap)
    python docker/bootstrap.py --dry-run                # print the plan, change nothing
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from feast.errors import FeastObjectNotFoundException
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from rich.console import Console

from pipelines.run import run_all
from pipelines.materialize import (
    FeatureTableError,
    apply_and_materialize,
    online_store_gaps,
    present_view_tables,
    validate_tables,
)
from recstack.featurestore import open_store
from recstack.lake import list_days, partition_files
from recstack.logs import configure_logging, quiet_third_party
from recstack.schemas import ITEM_FEATURE_VIEW, ITEM_FEATURES, ITEM_FEATURES_FILE
from recstack.settings import Settings, get_settings
from simulator.cli import simulate_with_progress
from training.train import train_and_register
from training.cli import print_train_result
from training.registry import client_for, model_names

logger = logging.getLogger("recstack.bootstrap")
console = Console(stderr=True)

SIMULATE, PIPELINE, MATERIALIZE, TRAIN = "simulate", "pipeline", "materialize", "train"
# Item ids probed in the online store: any of them with values means it was materialized.
PROBE_ITEMS = 50


@dataclass(frozen=True)
class StackState:
    """What the volumes hold, as far as the bootstrap cares."""

    lake_days: int  # day partitions of the event lake
    lake_files: int  # event part files (the simulator's and the sink's)
    feature_tables: bool  # the offline feature tables exist and pass the pipeline's checks
    online_features: bool  # the online store answers item features with values
    champion: dict[str, str] | None  # {"candidates": v, "ranker": v}, None unless both are set

    def describe(self) -> str:
        champion = (f"champion candidates v{self.champion['candidates']} / ranker "
                    f"v{self.champion['ranker']}" if self.champion else "no champion")
        return (f"lake: {self.lake_days} days, {self.lake_files} event files; feature tables: "
                f"{'yes' if self.feature_tables else 'no'}; online store: "
                f"{'item features present' if self.online_features else 'empty'}; {champion}")


def plan(state: StackState) -> list[str]:
    """The steps that fill in what ``state`` lacks, in order; [] when nothing is missing."""
    steps: list[str] = []
    if state.lake_files == 0:
        steps += [SIMULATE, PIPELINE]
    elif not state.feature_tables:
        steps.append(PIPELINE)
    elif not state.online_features:
        steps.append(MATERIALIZE)
    if state.champion is None:
        steps.append(TRAIN)
    return steps


def kept(state: StackState, steps: list[str]) -> list[str]:
    """What the plan leaves as it is (for the log line a user reads)."""
    out = []
    if SIMULATE not in steps:
        out.append(f"the lake ({state.lake_days} days, {state.lake_files} event files)")
    if PIPELINE not in steps:
        out.append("the feature tables")
    if PIPELINE not in steps and MATERIALIZE not in steps:
        out.append("the online store")
    if TRAIN not in steps and state.champion:
        out.append(f"the champion (ranker v{state.champion['ranker']})")
    return out


# ---- looking at the stack ------------------------------------------------------------------

def inspect_stack(settings: Settings) -> StackState:
    tables = feature_tables_valid(settings)
    return StackState(
        lake_days=len(list_days(settings.lake_dir)),
        lake_files=len(partition_files(settings.lake_dir)),
        feature_tables=tables,
        online_features=tables and online_store_current(settings),
        champion=champion(settings),
    )


def feature_tables_valid(settings: Settings) -> bool:
    try:
        validate_tables(settings.features_dir)
    except (FeatureTableError, FileNotFoundError, OSError) as exc:
        logger.info("offline feature tables not usable: %s", exc)
        return False
    return True


def online_store_current(settings: Settings) -> bool:
    """Item features present, and no view behind the offline tables: the check ``recstack up``
    makes natively (``pipelines.materialize.online_store_gaps``), which also sees a Redis
    restored from an older state or a view lost on its own."""
    if not online_item_features(settings):
        return False
    gaps = online_store_gaps(settings)
    for view, why in gaps.items():
        logger.info("online store behind the offline tables: %s: %s", view, why)
    return not gaps


def online_item_features(settings: Settings) -> bool:
    """True when some items of the offline item table have values in the online store.

    Raises when Redis does not answer: unreachable is not empty.
    """
    table = pq.read_table(Path(settings.features_dir) / ITEM_FEATURES_FILE, columns=["item_id"])
    ids = sorted(set(table["item_id"].to_pylist()))[:PROBE_ITEMS]
    store = open_store(settings)
    try:
        store.get_feature_view(ITEM_FEATURE_VIEW)
    except FeastObjectNotFoundException:
        return False  # never applied (a new Feast registry)
    feature = ITEM_FEATURES[0]
    rows = store.get_online_features(
        features=[f"{ITEM_FEATURE_VIEW}:{feature}"], entity_rows=[{"item_id": i} for i in ids],
    ).to_dict()
    return any(value is not None for value in rows[feature])


def champion(settings: Settings) -> dict[str, str] | None:
    """Both models' serving-alias versions, None if either alias (or model) does not exist.

    Any other MLflow failure raises: it is not evidence that there is no champion.
    """
    absent = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}
    client = client_for(settings)
    pair: dict[str, str] = {}
    for kind, name in model_names(settings).items():
        try:
            version = client.get_model_version_by_alias(name, settings.mlflow.serving_alias)
        except MlflowException as exc:
            if exc.error_code in absent:
                return None
            raise
        pair[kind] = str(version.version)
    return pair


# ---- filling in ----------------------------------------------------------------------------

def run_simulate(settings: Settings) -> None:
    summary = simulate_with_progress(settings, console=console)
    console.print(f"simulated {summary.n_impressions:,} impressions over {summary.n_days} days")


def run_pipeline(settings: Settings) -> None:
    result = run_all(settings)
    console.print(f"feature pipeline: run {result.get('run_id')}")


def run_materialize(settings: Settings) -> None:
    """Every view again from the oldest offline snapshot: a lost Redis leaves the Feast
    registry claiming a materialization the store no longer holds, so the incremental mode
    would write nothing; the rewrite mode clears the stored timestamps (none here) and
    writes each entity's newest row."""
    tables = validate_tables(settings.features_dir)
    views = present_view_tables(settings.features_dir)
    oldest = min(tables[t].first for t in views.values())  # type: ignore[type-var]
    result = apply_and_materialize(settings, rewritten_from=oldest)
    console.print(f"re-materialized {result.rows} from the offline tables "
                  f"in {result.seconds:.1f}s")


def run_train(settings: Settings) -> None:
    print_train_result(train_and_register(settings), settings, out=console)


STEPS = {SIMULATE: run_simulate, PIPELINE: run_pipeline, MATERIALIZE: run_materialize,
         TRAIN: run_train}


def bootstrap(settings: Settings, dry_run: bool = False) -> list[str]:
    """Inspect, plan, run the plan; returns the steps run (or planned, with ``dry_run``)."""
    state = inspect_stack(settings)
    steps = plan(state)
    console.print(f"bootstrap: found {state.describe()}")
    if kept(state, steps):
        console.print("bootstrap: keeping " + ", ".join(kept(state, steps)))
    if not steps:
        console.print("bootstrap: nothing to do")
        return steps
    console.print("bootstrap: will run " + " -> ".join(steps) + (" (dry run)" if dry_run else ""))
    if dry_run:
        return steps
    for step in steps:
        started = time.perf_counter()
        console.rule(f"bootstrap: {step}")
        STEPS[step](settings)
        if step == PIPELINE and not online_item_features(settings):
            # The pipeline materializes incrementally from what the Feast registry recorded;
            # with a lost Redis that is nothing.
            run_materialize(settings)
        console.print(f"bootstrap: {step} done in {time.perf_counter() - started:.1f}s")
    return steps


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        bootstrap(settings, dry_run=args.dry_run)
    except Exception as exc:  # noqa: BLE001 - one clear line, then a non-zero exit
        logger.exception("bootstrap failed")
        console.print(f"[red]bootstrap failed:[/red] {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
