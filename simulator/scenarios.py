"""Drift scenarios: declarative YAML files that change the world from a given simulated day.

A scenario is a name, a one-line description and a list of drifts; each drift has a ``kind``
and the 0-based simulated ``day`` it starts on (day 0 = ``sim.start_date``). The kinds:

- ``taste_shift``: users of a segment (country and/or device) move their taste towards other
  categories (``strength`` 1 = entirely).
- ``new_item_surge``: ``fraction`` x the catalogue is released at the start of the day
  (optionally only in some categories): cold start.
- ``hot_item``: ``n_items`` random released items become far more appealing (``boost``
  logits) and the logging policy's popularity estimate jumps (``popularity_factor``), for
  ``duration_days`` (default: to the end).
- ``seasonality``: some categories' appeal follows ``amplitude * cos(2 pi (d - day) / period)``
  from the day on (peak on ``day``, trough half a period later).
- ``new_user_surge``: ``fraction`` x the users join on the day (optionally all in a segment).
- ``data_bug``: an upstream bug in the written events from the day on, schema-valid so only
  validation or drift monitoring can catch it: ``position`` / ``request_id`` /
  ``model_version`` become null, or ``position`` shifts (a 0-based index written 1-based).

Structural drifts (new items, new users) are added to the world before the run (their ids
exist from the start; they appear on their day); the others are applied day by day by
:meth:`Scenario.world_on`, :meth:`Scenario.policy_on` and :meth:`Scenario.corrupt`.
Files live in ``simulator/scenarios/<name>.yaml``; ``load_scenario`` also takes a path.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recstack.clock import day_start
from simulator.policy import LoggingPolicy
from simulator.streams import STREAM_SCENARIO
from simulator.world import COUNTRIES, DEVICES, World, _normalize, epoch_us

logger = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
_DAY_US = 86_400 * 1_000_000


class ScenarioError(ValueError):
    """A scenario file that is missing, malformed or does not fit the world."""


class Segment(BaseModel):
    """A group of users: a country and/or a device (None = any)."""

    model_config = ConfigDict(extra="forbid")

    country: Literal[COUNTRIES] | None = None  # type: ignore[valid-type]
    device: Literal[DEVICES] | None = None  # type: ignore[valid-type]


class _Drift(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day: int = Field(ge=0, description="0-based simulated day the drift starts on")


class TasteShift(_Drift):
    kind: Literal["taste_shift"]
    segment: Segment
    to_categories: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    strength: float = Field(0.8, gt=0, le=1)


class NewItemSurge(_Drift):
    kind: Literal["new_item_surge"]
    fraction: float = Field(gt=0, le=5, description="new items as a share of the catalogue")
    categories: list[Annotated[int, Field(ge=0)]] | None = None


class HotItem(_Drift):
    kind: Literal["hot_item"]
    n_items: int = Field(1, ge=1, le=100)
    boost: float = Field(3.0, gt=0, le=10, description="added logit")
    popularity_factor: float = Field(30.0, ge=1)
    duration_days: int | None = Field(None, ge=1)


class Seasonality(_Drift):
    kind: Literal["seasonality"]
    categories: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    amplitude: float = Field(1.5, gt=0, le=10, description="logits at the peak")
    period_days: float = Field(4.0, gt=0)


class NewUserSurge(_Drift):
    kind: Literal["new_user_surge"]
    fraction: float = Field(gt=0, le=5, description="new users as a share of the population")
    segment: Segment | None = None


class DataBug(_Drift):
    kind: Literal["data_bug"]
    field: Literal["position", "request_id", "model_version"]
    effect: Literal["null", "shift"]
    shift: int = Field(1, description="added to position when effect is 'shift'")
    fraction: float = Field(1.0, gt=0, le=1, description="share of the day's events affected")

    @model_validator(mode="after")
    def _shift_needs_position(self) -> DataBug:
        if self.effect == "shift" and self.field != "position":
            raise ValueError("effect 'shift' applies to field 'position' only")
        return self


Drift = Annotated[
    TasteShift | NewItemSurge | HotItem | Seasonality | NewUserSurge | DataBug,
    Field(discriminator="kind"),
]


class Scenario(BaseModel):
    """A named list of drifts (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field(min_length=1, max_length=200, pattern=r"^[^\n]+$")
    drifts: list[Drift] = Field(min_length=1)

    @property
    def first_day(self) -> int:
        return min(d.day for d in self.drifts)

    def check_fits(self, world: World, n_days: int) -> None:
        """Raise ScenarioError unless every drift starts within ``n_days`` and fits the world."""
        late = [d for d in self.drifts if d.day >= n_days]
        if late:
            raise ScenarioError(
                f"scenario {self.name!r} starts a drift on day {late[0].day} but only {n_days} "
                f"day(s) are simulated (days 0..{n_days - 1}); use --days {late[0].day + 1} or more"
            )
        for d in self.drifts:
            cats = getattr(d, "to_categories", None) or getattr(d, "categories", None) or []
            bad = [c for c in cats if c >= world.n_categories]
            if bad:
                raise ScenarioError(
                    f"scenario {self.name!r}: {d.kind} on day {d.day} names categories {bad}, "
                    f"the world has 0..{world.n_categories - 1}"
                )
            if isinstance(d, TasteShift) and not world.segment_mask(
                d.segment.country, d.segment.device
            ).any():
                raise ScenarioError(
                    f"scenario {self.name!r}: taste_shift segment {d.segment} has no users"
                )

    def prepare(self, world: World) -> World:
        """The world with the scenario's new items and users added (they appear on their day)."""
        for index, d in enumerate(self.drifts):
            rng = np.random.default_rng([world.seed, STREAM_SCENARIO, index])
            start_us = epoch_us(day_start(world.start_date + dt.timedelta(days=d.day)))
            if isinstance(d, NewItemSurge):
                n = max(1, int(round(d.fraction * world.n_items)))
                # Released in the hour before the day starts, so the day's lists can show them.
                released = start_us - rng.integers(1, 3600 * 1_000_000, size=n)
                world = world.with_new_items(rng, n, released, d.categories)
            elif isinstance(d, NewUserSurge):
                n = max(1, int(round(d.fraction * world.n_users)))
                seg = d.segment or Segment()
                world = world.with_new_users(rng, n, start_us, seg.country, seg.device)
        return world

    def _active(self, day_index: int) -> list[tuple[int, _Drift]]:
        out = []
        for index, d in enumerate(self.drifts):
            duration = getattr(d, "duration_days", None)
            if d.day <= day_index and (duration is None or day_index < d.day + duration):
                out.append((index, d))
        return out

    def hot_items(self, world: World, drift_index: int) -> np.ndarray:
        """The items a ``hot_item`` drift picks (seeded; among items released by its day)."""
        d = self.drifts[drift_index]
        assert isinstance(d, HotItem)
        rng = np.random.default_rng([world.seed, STREAM_SCENARIO, drift_index])
        released = np.flatnonzero(
            world.available_items(day_start(world.start_date + dt.timedelta(days=d.day)))
        )
        return np.sort(rng.choice(released, size=min(d.n_items, released.size), replace=False))

    def world_on(self, world: World, day_index: int) -> World:
        """The ground truth on simulated day ``day_index``: ``world`` with active drifts applied.

        ``world`` is not modified; changed arrays are copies.
        """
        changes: dict[str, np.ndarray] = {}
        for index, d in self._active(day_index):
            if isinstance(d, TasteShift):
                taste = changes.get("user_taste", world.user_taste).copy()
                users = world.segment_mask(d.segment.country, d.segment.device)
                target = _normalize(world.category_centroids[d.to_categories].mean(axis=0))
                taste[users] = _normalize((1 - d.strength) * taste[users] + d.strength * target)
                changes["user_taste"] = taste.astype(np.float32)
            elif isinstance(d, HotItem):
                quality = changes.get("item_quality", world.item_quality).copy()
                quality[self.hot_items(world, index)] += d.boost
                changes["item_quality"] = quality
            elif isinstance(d, Seasonality):
                boost = changes.get("category_boost", world.category_boost).copy()
                phase = 2 * np.pi * (day_index - d.day) / d.period_days
                boost[d.categories] += np.float32(d.amplitude * np.cos(phase))
                changes["category_boost"] = boost
        return replace(world, **changes) if changes else world

    def policy_on(self, policy: LoggingPolicy, world: World, day_index: int) -> LoggingPolicy:
        """The logging policy on ``day_index``: hot items' popularity estimates jump."""
        popularity = None
        for index, d in self._active(day_index):
            if isinstance(d, HotItem):
                popularity = (policy.popularity if popularity is None else popularity).copy()
                popularity[self.hot_items(world, index)] *= d.popularity_factor
        return policy if popularity is None else replace(policy, popularity=popularity)

    def corrupt(self, table: pa.Table, day_index: int, seed: int) -> pa.Table:
        """The events as an upstream bug active on ``day_index`` would write them."""
        for index, d in self._active(day_index):
            if not isinstance(d, DataBug) or table.num_rows == 0:
                continue
            hit = np.ones(table.num_rows, dtype=bool)
            if d.fraction < 1:
                rng = np.random.default_rng([seed, STREAM_SCENARIO, index, day_index])
                hit = rng.random(table.num_rows) < d.fraction
            column = table[d.field]
            if d.effect == "null":
                new = pc.if_else(pa.array(hit), pa.nulls(table.num_rows, column.type), column)
            else:
                shifted = pc.add(column, pa.scalar(d.shift, column.type))
                new = pc.if_else(pa.array(hit), shifted, column)
            table = table.set_column(table.schema.get_field_index(d.field), d.field, new)
        return table


def scenario_path(name_or_path: str | Path) -> Path:
    """The YAML file of a bundled scenario name, or the given path if it is a file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    bundled = SCENARIO_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    known = ", ".join(s.name for s in list_scenarios()) or "none"
    raise ScenarioError(f"unknown scenario {str(name_or_path)!r}; known: {known}")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario (bundled name or YAML path); ScenarioError says what is wrong."""
    path = scenario_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping with name, description, drifts")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ScenarioError(f"{path}: invalid scenario: {problems}") from None


def list_scenarios() -> list[Scenario]:
    """The bundled scenarios, by name (a broken bundled file raises ScenarioError)."""
    return [load_scenario(p) for p in sorted(SCENARIO_DIR.glob("*.yaml"))]
