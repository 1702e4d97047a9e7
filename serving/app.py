"""The API app factory: ``uvicorn serving.app:create_app --factory``.

``create_app(settings, resources)`` builds one replica. Without ``resources`` the lifespan
connects Redis, then loads models and item features in the background (retrying while MLflow
or Feast are unreachable, so ``/healthz`` answers at once and ``/readyz`` says what is missing).
Tests pass in-memory ``Resources`` and no background work starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import faiss
import mlflow
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from recstack.logs import configure_logging, quiet_third_party
from recstack.mlflowenv import apply_http_defaults
from recstack.settings import ServingSettings, Settings, get_settings
from serving.arms import Experiment, ShadowRunner, build_experiment
from serving.errors import ServingError
from serving.events import RedisStreamSink, stream_client
from serving.metrics import ServingMetrics
from serving.middleware import (
    BodySizeLimitMiddleware,
    ConcurrencyLimitMiddleware,
    RequestMetricsMiddleware,
)
from serving.onlinestore import sync_redis_client
from serving.remote import http_client
from serving.resources import Maintainer, Resources, Role, budgets_of
from serving.responses import json_response
from serving.routes import events, health, recommendations, stages
from serving.routes import experiment as experiment_routes
from serving.validation import readable_errors
from serving.variants import VariantLoader

logger = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 10


def create_candidates_app() -> FastAPI:
    """The candidate service (split mode): ``uvicorn serving.app:create_candidates_app --factory``."""
    return create_app(role="candidates")


def create_ranking_app() -> FastAPI:
    """The ranking service (split mode): ``uvicorn serving.app:create_ranking_app --factory``."""
    return create_app(role="ranking")


def create_app(
    settings: Settings | None = None,
    resources: Resources | None = None,
    role: Role = "api",
    experiment: Experiment | None = None,
) -> FastAPI:
    """One replica of ``role``: the API (``/recommendations``, ``/events``), or in split mode
    the candidate or ranking service. ``resources`` (fakes in tests) disables the background
    loader. The API runs the online experiment of ``settings.ab`` (or ``experiment``, whose
    arms then carry their own recommenders)."""
    own_logging = settings is None
    settings = settings or get_settings()
    tuning = settings.serving
    if own_logging:  # launched by uvicorn --factory: this is the process entrypoint
        quiet_third_party()
        configure_logging(settings.log_level, settings.log_json)
    metrics = ServingMetrics()
    experiment = _experiment_of(role, experiment, settings, metrics)

    title = {"api": "recstack API", "candidates": "recstack candidates",
             "ranking": "recstack ranking"}[role]
    lifespan = _lifespan(settings, tuning, metrics, role, resources, experiment)
    app = FastAPI(title=title, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.tuning = tuning
    app.state.experiment = experiment
    if resources is not None and resources.budgets is None:
        resources.budgets = budgets_of(settings, tuning)
        resources.rebuild()
    app.state.resources = resources or Resources(
        n_candidates=settings.serving.n_candidates, budgets=budgets_of(settings, tuning), role=role
    )
    # Read at scrape time from the resources of the moment (the lifespan swaps in live ones).
    metrics.track_item_feature_share(lambda: app.state.resources.item_feature_share())
    _include_routers(app, role)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    _add_middleware(app, settings, tuning, metrics)
    return app


def _experiment_of(role: Role, experiment: Experiment | None, settings: Settings,
                   metrics: ServingMetrics) -> Experiment | None:
    """The API's online experiment (``experiment``, else the one of ``settings.ab``), wired to
    the metrics; the split-mode stage services run none."""
    if role == "api" and experiment is None:
        experiment = build_experiment(settings.ab, settings.mlflow.serving_alias)
    if role != "api":
        experiment = None
    if experiment is not None:
        _wire_experiment(experiment, settings, metrics)
    return experiment


def _lifespan(
    settings: Settings, tuning: ServingSettings, metrics: ServingMetrics, role: Role,
    resources: Resources | None, experiment: Experiment | None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: the shadow runner around either the given ``resources`` (no
    background work) or live ones (Redis, the maintainer, the experiment's arm loader)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if experiment is not None and experiment.shadow is not None:
            experiment.shadow.start()
        try:
            if resources is not None:
                app.state.resources = resources
                if resources.recommender is not None:
                    metrics.set_models(resources.recommender.versions)
                yield
                return
            async with _live_resources(settings, tuning, metrics, role) as (live, maintainer):
                app.state.resources = live
                async with _arm_loader(settings, experiment, live, maintainer):
                    yield
        finally:
            if experiment is not None and experiment.shadow is not None:
                experiment.shadow.stop()

    return lifespan


def _include_routers(app: FastAPI, role: Role) -> None:
    """The routes of ``role``, and the health routes every role has."""
    if role == "api":
        app.include_router(recommendations.router)
        app.include_router(events.router)
        app.include_router(experiment_routes.router)
    elif role == "candidates":
        app.include_router(stages.candidates_router)
    else:
        app.include_router(stages.ranking_router)
    app.include_router(health.router)


def _add_middleware(app: FastAPI, settings: Settings, tuning: ServingSettings,
                    metrics: ServingMetrics) -> None:
    """Body size limit, concurrency limit, request metrics (each added one wraps the ones
    added before it)."""
    app.add_middleware(BodySizeLimitMiddleware, metrics=metrics,
                       max_bytes=settings.events.max_body_bytes)
    # Added last = outermost: shed 503s are timed and counted like every other response.
    app.add_middleware(
        ConcurrencyLimitMiddleware, metrics=metrics, limit=tuning.max_in_flight,
        retry_after_s=tuning.retry_after_s,
        max_queue_s=tuning.max_queue_ms / 1000 if tuning.max_queue_ms else None,
        min_busy=tuning.queue_shed_min_busy,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)


def _wire_experiment(exp: Experiment, settings: Settings, metrics: ServingMetrics) -> None:
    """Metrics, the canary guard and the shadow runner of the replica's experiment."""
    ab = settings.ab
    metrics.set_arms({a.name: a.weight for a in exp.arms})
    if exp.mode == "canary":
        for arm in exp.arms[1:]:
            if arm.name not in exp.guards:
                exp.add_canary_guard(arm.name, ab.canary_window, ab.canary_min_requests,
                                     ab.canary_max_error_rate, ab.canary_p99_ms)

    def rolled_back(arm: str, reason: str) -> None:
        metrics.canary_rollbacks.labels(arm=arm).inc()
        metrics.arm_weight.labels(arm=arm).set(0)

    exp.on_rollback = rolled_back
    if exp.mode == "shadow" and exp.shadow_arm is not None and exp.shadow is None:
        exp.shadow = ShadowRunner(exp.shadow_arm, ab.shadow_queue, metrics.shadow_result)
    logger.info("online experiment %s (%s): %s", exp.name, exp.mode,
                ", ".join(f"{a.name}={a.models}@{a.weight:g}" for a in exp.arms)
                + (f", shadow={exp.shadow_arm.models}" if exp.shadow_arm else ""))


@contextlib.asynccontextmanager
async def _arm_loader(
    settings: Settings, exp: Experiment | None, live: Resources, maintainer: Any = None
) -> AsyncIterator[None]:
    """Loads the experiment's non-champion arms in the background (nothing to do without).
    Arms read features through the maintainer's ``readers_for(source, ranker)`` when it has
    one (each ranker its own feature set), else through the replica's readers."""
    if exp is None:
        yield
        return
    loader = VariantLoader(settings, exp, live,
                           readers=getattr(maintainer, "readers_for", None))
    if not loader.arms():
        yield
        return
    task = asyncio.create_task(loader.run(), name="experiment-arms")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _live_resources(
    settings: Settings, tuning: ServingSettings, metrics: ServingMetrics, role: Role
) -> AsyncIterator[tuple[Resources, Maintainer]]:
    """Real resources: async Redis for events and PING, sync Redis for the feature reads (they
    run in the request threads), a background model/feature loader (yielded with them)."""
    # MLflow's HTTP client retries a refused connection for minutes by default; the maintainer
    # has its own back-off, so fail fast and keep /readyz's last_error current.
    apply_http_defaults(settings.mlflow)
    # Anything in MLflow that reads the global URIs must see ours, never a local ./mlflow.db.
    mlflow.set_tracking_uri(settings.mlflow.uri)
    mlflow.set_registry_uri(settings.mlflow.uri)

    # One query per request: OpenMP threads only add contention between request threads.
    faiss.omp_set_num_threads(1)
    timeout = settings.redis.socket_timeout_s
    client = stream_client(settings.redis.url, timeout)

    async def ping() -> bool:
        return bool(await client.ping())  # type: ignore[misc]  # redis stubs: sync|async

    features_client = sync_redis_client(
        settings.redis.url, timeout, max_connections=tuning.max_in_flight + 4
    )
    live = Resources(
        events=RedisStreamSink(client, max_entries=settings.events.max_stream_entries,
                               seen=settings.seen),
        ping=ping, role=role,
        n_candidates=settings.serving.n_candidates, budgets=budgets_of(settings, tuning),
    )
    remote = None
    if role == "api" and tuning.mode == "split":
        if not (tuning.candidates_url and tuning.ranking_url):
            raise RuntimeError("split mode needs RECSTACK_SERVING__CANDIDATES_URL and "
                               "RECSTACK_SERVING__RANKING_URL")
        remote = (http_client(tuning.candidates_url, tuning.pool_connections),
                  http_client(tuning.ranking_url, tuning.pool_connections))
        logger.info("split mode: candidates %s, ranking %s", tuning.candidates_url,
                    tuning.ranking_url)
    maintainer = Maintainer(settings, live, metrics, features_client, tuning, remote)
    task = asyncio.create_task(maintainer.run(), name="serving-maintainer")
    # uvicorn opens the port only after the lifespan's startup: waiting for the first load here
    # keeps a (re)started replica closed until it can serve, so nginx's retry on a refused
    # connection sends its traffic to the other replicas instead of to a replica answering 503.
    # A failed first load (no champion yet, MLflow down) opens the port at once, not ready.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(maintainer.first_pass.wait(), tuning.startup_wait_s)
    try:
        yield live, maintainer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        features_client.close()
        for c in remote or ():
            c.close()


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return json_response({"error": exc.code, "detail": exc.detail}, exc.status_code, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    k_max = request.app.state.settings.serving.k_max
    if request.url.path == "/events":
        request.app.state.metrics.events_rejected.labels(reason="invalid").inc()
    errors = readable_errors(exc.errors(), k_max=k_max)[:MAX_ERRORS_SHOWN + 1]
    detail = "; ".join(e["msg"] for e in errors[:MAX_ERRORS_SHOWN])
    if len(errors) > MAX_ERRORS_SHOWN:  # a 1,000-event batch must not echo 1,000 messages
        detail += "; ..."
        errors = errors[:MAX_ERRORS_SHOWN]
    return json_response({"error": "invalid_request", "detail": detail, "errors": errors}, 422)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return json_response({"error": "internal_error", "detail": "internal error"}, 500)
