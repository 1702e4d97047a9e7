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
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from recstack.logs import configure_logging
from recstack.settings import Settings, get_settings
from serving.errors import ServingError
from serving.events import RedisStreamSink
from serving.metrics import ServingMetrics
from serving.middleware import RequestMetricsMiddleware
from serving.resources import Maintainer, Resources
from serving.responses import json_response
from serving.routes import events, health, recommendations
from serving.validation import readable_errors

logger = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 10


def create_app(settings: Settings | None = None, resources: Resources | None = None) -> FastAPI:
    """One API replica. ``resources`` (fakes in tests) disables the background loader."""
    own_logging = settings is None
    settings = settings or get_settings()
    if own_logging:  # launched by uvicorn --factory: this is the process entrypoint
        configure_logging(settings.log_level, settings.log_json)
    metrics = ServingMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            app.state.resources = resources
            if resources.recommender is not None:
                metrics.set_models(resources.recommender.versions)
            yield
            return
        async with _live_resources(settings, metrics) as live:
            app.state.resources = live
            yield

    app = FastAPI(title="recstack API", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.resources = resources or Resources(
        n_candidates=settings.serving.n_candidates, deadline_s=settings.serving.deadline_ms / 1000
    )
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


@contextlib.asynccontextmanager
async def _live_resources(settings: Settings, metrics: ServingMetrics) -> AsyncIterator[Resources]:
    """Real resources: async Redis for events and PING, a background model/feature loader."""
    import faiss
    import mlflow
    import redis.asyncio as redis_asyncio

    # MLflow's HTTP client retries a refused connection for minutes by default; the maintainer
    # has its own back-off, so fail fast and keep /readyz's last_error current.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # Anything in MLflow that reads the global URIs must see ours, never a local ./mlflow.db.
    mlflow.set_tracking_uri(settings.mlflow.uri)
    mlflow.set_registry_uri(settings.mlflow.uri)

    # One query per request: OpenMP threads only add contention between request threads.
    faiss.omp_set_num_threads(1)
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout = settings.redis.socket_timeout_s
    # No retry back-off (redis-py's default waits seconds): a failed write is a 503 the client
    # retries, which is what Retry-After is for.
    client = redis_asyncio.from_url(
        settings.redis.url, socket_timeout=timeout, socket_connect_timeout=max(timeout, 0.2),
        retry=Retry(NoBackoff(), 0),
    )
    async def ping() -> bool:
        return bool(await client.ping())  # type: ignore[misc]  # redis stubs: sync|async

    live = Resources(
        events=RedisStreamSink(client), ping=ping,
        n_candidates=settings.serving.n_candidates, deadline_s=settings.serving.deadline_ms / 1000,
    )
    task = asyncio.create_task(Maintainer(settings, live, metrics).run(), name="serving-maintainer")
    try:
        yield live
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return json_response({"error": exc.code, "detail": exc.detail}, exc.status_code, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    k_max = request.app.state.settings.serving.k_max
    errors = readable_errors(exc.errors(), k_max=k_max)[:MAX_ERRORS_SHOWN + 1]
    detail = "; ".join(e["msg"] for e in errors[:MAX_ERRORS_SHOWN])
    if len(errors) > MAX_ERRORS_SHOWN:  # a 1,000-event batch must not echo 1,000 messages
        detail += "; ..."
        errors = errors[:MAX_ERRORS_SHOWN]
    return json_response({"error": "invalid_request", "detail": detail, "errors": errors}, 422)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return json_response({"error": "internal_error", "detail": "internal error"}, 500)
