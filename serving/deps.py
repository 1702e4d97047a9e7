"""``Annotated`` dependencies of the routes. All are ``async def`` so they run on the event loop
and do not cost a threadpool hop each (only the sync recommendation endpoint does)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from recstack.settings import ServingSettings, Settings
from serving.arms import Experiment
from serving.errors import NotReady
from serving.metrics import ServingMetrics
from serving.protocols import EventSink
from serving.recommender import Recommender
from serving.resources import Resources


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_tuning(request: Request) -> ServingSettings:
    return request.app.state.tuning


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


async def get_recommender(request: Request) -> Recommender:
    """The replica's recommender, or 503 ``not_ready`` (with Retry-After) naming what is
    missing: a replica that would serve a silently worse list (e.g. an item table without
    values after a lost Redis) sends the request back, and the balancer tries a ready one.
    Its own state only (``Resources.missing``): a Redis outage is served degraded."""
    resources = request.app.state.resources
    recommender = resources.recommender
    if recommender is None:
        raise NotReady("models are not loaded yet")
    missing = resources.missing(to_recommend=True)
    if missing:
        raise NotReady("this replica is not ready: missing " + "; ".join(missing))
    return recommender


async def get_experiment(request: Request) -> Experiment | None:
    return request.app.state.experiment


async def get_event_sink(request: Request) -> EventSink:
    sink = request.app.state.resources.events
    if sink is None:
        raise NotReady("the event stream is not connected yet")
    return sink


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
TuningDep = Annotated[ServingSettings, Depends(get_tuning)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
ExperimentDep = Annotated[Experiment | None, Depends(get_experiment)]
EventSinkDep = Annotated[EventSink, Depends(get_event_sink)]
