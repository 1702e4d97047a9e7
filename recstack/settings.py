"""Typed settings for every stage, read from the environment (prefix ``RECSTACK_``).

Nested sections use ``__``: ``RECSTACK_REDIS__PORT=16400``, ``RECSTACK_SIM__N_USERS=500``.
``RECSTACK_HOME`` moves all runtime state (default ``var/``). Nothing here touches the disk or
the network; directories are created by the code that writes into them.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class SimSettings(BaseModel):
    """The simulated world: its size, its seed and the simulated calendar."""

    seed: int = 42
    n_users: int = Field(3000, ge=1)
    n_items: int = Field(2000, ge=1)
    n_categories: int = Field(20, ge=1)
    days: int = Field(4, ge=1, description="simulated days of traffic written to the lake")
    start_date: dt.date = dt.date(2026, 1, 1)
    sessions_per_user_per_day: float = Field(1.0, gt=0)
    list_size: int = Field(10, ge=1, description="items shown per simulated request")


class RedisSettings(BaseModel):
    """The project's own Redis (never the machine's default instance on 6379).

    Its password: ``password`` when given (compose sets it), else the one the native stack
    generates into ``password_file`` (``$RECSTACK_HOME/run/redis.secret``, mode 0600) when
    ``generate_password`` is on. The file is read when a client needs the secret, not when the
    settings are made, so settings made before ``recstack up`` still connect after it.
    """

    host: str = "127.0.0.1"
    port: int = 16379
    password: SecretStr | None = None
    generate_password: bool = True
    password_file: Path | None = None  # default: set by Settings under its home
    socket_timeout_s: float = 0.05

    def secret(self) -> str | None:
        """The password clients authenticate with, or None for an open server."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None and self.password_file.is_file():
            return self.password_file.read_text().strip() or None
        return None

    @property
    def url(self) -> str:
        secret = self.secret()
        auth = f":{quote(secret, safe='')}@" if secret else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        """host:port, for messages and logs: never the password."""
        return f"{self.host}:{self.port}"

    @property
    def feast_connection_string(self) -> str:
        secret = self.secret()
        extra = f",password={secret}" if secret else ""
        return f"{self.address}{extra}"


class MlflowSettings(BaseModel):
    """The MLflow tracking server and the registered model names."""

    host: str = "127.0.0.1"
    port: int = 15000
    tracking_uri: str | None = None  # overrides host/port, e.g. http://mlflow:5000 in compose
    experiment: str = "recstack"
    candidates_model: str = "candidates"
    ranker_model: str = "ranker"
    serving_alias: str = "champion"
    git_sha: str = Field("", description="the code version tagged on runs; empty: asked from git")
    # MLflow's HTTP client retries a refused connection for minutes by default; processes that
    # have their own back-off (the API's maintainer, the online experiment) fail fast instead.
    # Applied with setdefault (recstack.mlflowenv): an MLFLOW_HTTP_REQUEST_* already set wins.
    http_max_retries: int = Field(1, ge=0, description="MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    http_timeout_s: int = Field(10, ge=1, description="MLFLOW_HTTP_REQUEST_TIMEOUT")

    @property
    def uri(self) -> str:
        return self.tracking_uri or f"http://{self.host}:{self.port}"


class FeastSettings(BaseModel):
    """Feast project; the repo lives in ``feature_repo/`` and reads these via env vars."""

    project: str = "recstack"
    repo_path: Path = REPO_ROOT / "feature_repo"
    feature_service: str = "ranker_v2"
    # "redis" for one server, "redis_cluster" for a Redis Cluster (connection string: seed nodes).
    redis_type: Literal["redis", "redis_cluster"] = "redis"


class PipelineSettings(BaseModel):
    """Beam pipeline options that are not runner flags."""

    runner: str = "DirectRunner"
    window_days: int = 7
    popular_size: int = 500
    # Validation: tolerated relative change of a table's row count vs the last good run
    # (0.5 = +-50%); None disables the check.
    max_row_swing: float | None = Field(0.5, ge=0)
    # The lake's plausible day range (pipelines/lakecheck.py, pipelines/README.md): partitions
    # outside it are quarantined before a run plans its days.
    lake_dense_fraction: float = Field(0.01, gt=0, le=1, description="of the typical day's rows")
    lake_max_gap_days: int = Field(30, ge=1, description="between dense days of one run")
    lake_lookback_days: int = Field(30, ge=0, description="plausible days before the bulk")
    lake_ahead_days: int = Field(7, ge=0, description="plausible days after the bulk")
    # `recstack bench --suite pipelines`: lake sizes (events) and DirectRunner modes measured,
    # e.g. RECSTACK_PIPELINE__BENCH_SCALES='[1000000]' for a quick run.
    bench_scales: list[int] = Field(default_factory=lambda: [1_000_000, 10_000_000],
                                    min_length=1)
    bench_modes: list[Literal["in_memory", "multi_processing"]] = Field(
        default_factory=lambda: ["in_memory", "multi_processing"], min_length=1)


class TrainSettings(BaseModel):
    """Model sizes and training knobs."""

    embedding_dim: int = 32
    ranker_rounds: int = 150
    ranker_learning_rate: float = 0.05
    negatives_per_positive: int = 4
    # Candidate model and ranker: an event (a ranker row) counts 2^(-age/half-life), age from the
    # newest one trained on; None weighs every day alike. Short half-lives follow a taste shift
    # sooner and forget long-lived tastes sooner.
    recency_half_life_days: float | None = Field(None, gt=0)
    # Point-in-time features for the training set: "asof" (training/pitjoin.py: one sorted
    # as-of join per view, checked equal to Feast's retrieval) or "feast" (Feast's file offline
    # store, whose cost grows with rows x snapshots: minutes on a long imported history).
    pit_join: Literal["asof", "feast"] = "asof"
    # The training run also scores these baselines and the served pipeline on the full-catalogue
    # protocol of `recstack evaluate`, split at the holdout day; [] skips it.
    offline_models: list[Literal["popularity", "item_knn", "als", "candidates"]] = Field(
        default_factory=lambda: ["popularity", "item_knn", "als", "candidates"])
    # The training benchmark (``recstack bench training``): event counts to train at, each in
    # its own process, e.g. RECSTACK_TRAIN__BENCH_EVENTS='[10000000]'; and how long one may run.
    bench_events: list[int] = Field(default_factory=lambda: [1_000_000, 10_000_000])
    bench_timeout_s: float = Field(1800.0, gt=0)


ServingMode = Literal["inprocess", "split"]


class ServingSettings(BaseModel):
    """The serving tier: list sizes, the request deadline, stage budgets, overload limits,
    the Redis breaker and split-mode addresses of one replica."""

    k_default: int = 20
    k_max: int = 100
    n_candidates: int = 500
    deadline_ms: float = 100.0
    item_refresh_s: float = 60.0
    mode: ServingMode = "inprocess"
    # Per-stage budgets (DESIGN.md section 7), in ms; a stage past its budget is skipped.
    # Defaults are about twice DESIGN.md's per-stage targets: on 2 shared cores a thread waits
    # for the GIL or a core for milliseconds, and a skipped stage costs quality.
    candidates_budget_ms: float = Field(20.0, gt=0)
    user_features_budget_ms: float = Field(10.0, gt=0)
    ranking_budget_ms: float = Field(30.0, gt=0)
    # A client may shorten (never lengthen past this) its deadline with X-Deadline-Ms.
    max_deadline_ms: float = Field(1000.0, gt=0)
    # Requests a replica works on at once; more are shed with 503 + Retry-After.
    max_in_flight: int = Field(32, ge=1)
    retry_after_s: int = Field(1, ge=1)
    # A request that waited longer than this before its replica could start it (stamped by the
    # balancer, X-Request-Start) is refused with 503 at once: its deadline has passed, serving
    # it would only delay the requests behind it. 0 turns the check off.
    max_queue_ms: float = Field(100.0, ge=0)
    # ...but only while the replica has been busy at least this fraction of the last second (it
    # has a queue of its own). A late request at a replica with room was late elsewhere - a
    # balancer retry after a dead replica's connect timeout keeps the first attempt's stamp -
    # and is served. 0: refuse every late request.
    queue_shed_min_busy: float = Field(0.5, ge=0, le=1)
    # Redis circuit breaker: opens after this many consecutive failures, probes after cooldown.
    breaker_threshold: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(1.0, gt=0)
    # A starting replica opens its port after its first model load, waiting at most this long.
    startup_wait_s: float = Field(60.0, ge=0)
    # How often the replica checks whether a materialization finished (item feature refresh).
    materialization_poll_s: float = Field(5.0, gt=0)
    # A recommendation whose candidates have item values under this share says
    # ``item_features_partial`` (none: ``item_features_missing``; a replica whose whole item
    # table has no values is not ready and answers 503).
    item_features_min_share: float = Field(0.5, ge=0, le=1)
    # Split mode: where the candidate and ranking services are (their nginx front or a replica);
    # empty: derived by the native stack from its ports.
    candidates_url: str = ""
    ranking_url: str = ""
    # Replicas of each stage service in the native stack (split mode).
    candidates_replicas: int = Field(1, ge=1, le=8)
    ranking_replicas: int = Field(1, ge=1, le=8)
    # Keep-alive connections per service and replica process (httpx pool).
    pool_connections: int = Field(32, ge=1)
    # Chaos knob for tests and experiments: the ranker sleeps this long before scoring.
    inject_ranking_delay_ms: float = Field(0.0, ge=0)


SeenPolicy = Literal["none", "clicked", "shown"]


class SeenSettings(BaseModel):
    """Which items a user's lists leave out because the user has seen them.

    ``none`` (the default) leaves every item in: the simulated world's users click again what
    they liked, less often when it was shown recently (its fatigue model), so repeats are part
    of that world. ``clicked`` leaves out what the user clicked (a rated movie), ``shown`` what
    was shown to the user within ``window_days``. The history is a Redis sorted set per user,
    written by ``POST /events`` and by ``recstack pipeline`` from the lake, newest
    ``max_per_user`` items kept (recstack/history.py); candidates are over-fetched by as many
    items as the history holds, so ``k`` remain after the filter.
    """

    policy: SeenPolicy = "none"
    window_days: float = Field(30.0, gt=0)
    max_per_user: int = Field(500, ge=1, le=10_000)


class EventSettings(BaseModel):
    """What ``POST /events`` and the lake sink accept, and how big the event stream may grow.

    ``ts`` must lie in [now - allowed_lateness, now + clock_skew] of the stack's clock
    (``recstack.clock.stack_clock``): with ``clock="simulated"`` (the default: every stack here is
    driven by the simulator) now is the end of the simulated calendar (``sim.start_date +
    sim.days``) advancing at ``sim_speedup``; ``"wall"`` is the machine's UTC clock. The 30-day
    defaults cover what the stack itself posts: the load test from the world's end, the online
    experiment 3 and the drift experiment 9 simulated days past it, tests from sim.start_date.
    """

    clock: Literal["simulated", "wall"] = "simulated"
    sim_speedup: float = Field(1.0, gt=0, description="simulated seconds per wall second")
    allowed_lateness: dt.timedelta = dt.timedelta(days=30)
    clock_skew: dt.timedelta = dt.timedelta(days=30)
    # The stack's own full batches (1,000 simulator events) are ~0.3 MB, 1,000 events with every
    # string at its maximum ASCII length ~0.6 MB; bigger bodies are refused (413) before parsing.
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # The stream holds at most this many entries (acknowledged ones wait ``stream_retention``
    # for the monitor's XRANGE - two of its 30 s checks - then the sink trims them); beyond it
    # POST /events answers 503 + Retry-After instead of letting Redis reach maxmemory. Measured
    # 141 bytes per simulator event in Redis 7.0 (docker/redis.conf sizes compose's maxmemory
    # for this bound at its 750 B worst case). Retained entries count too, so a healthy sink
    # sees 503s only above 200k / 60 s ~ 3,300 events/s sustained.
    max_stream_entries: int = Field(200_000, ge=1)
    stream_retention: dt.timedelta = dt.timedelta(seconds=60)


class GateSettings(BaseModel):
    """When a challenger may replace the champion (``RECSTACK_GATE__*``)."""

    metric: Literal["auc", "ndcg_at_10", "logloss"] = Field(
        "auc", description="ranker metric compared on the shared holdout (logloss: lower wins)"
    )
    margin: float = Field(0.002, ge=0, description="the challenger must win by at least this")
    max_ndcg_drop: float = Field(
        0.01, ge=0, description="and may not lose more than this NDCG@10 to the champion"
    )
    min_score_std: float = Field(1e-4, ge=0, description="holdout scores must spread this much")
    min_distinct_scores: int = Field(10, ge=1)
    latency_rows: int = Field(500, ge=1, description="rows per ranker batch (DESIGN.md s.7)")
    latency_repeats: int = Field(200, ge=10)
    latency_p99_ms: float = Field(
        8.0, gt=0, description="ranker CPU-time p99 budget per batch (DESIGN.md section 7)")


class TrainerSettings(BaseModel):
    """The periodic retraining loop (``recstack trainer``, ``RECSTACK_TRAINER__*``)."""

    every_sim_days: float = Field(1.0, gt=0, description="retrain every N simulated days")
    speedup: float = Field(
        86400.0, gt=0, description="simulated seconds per wall second (86400: a day a second)"
    )
    run_pipeline: bool = Field(True, description="run `recstack pipeline` before training")
    pipeline_timeout_s: float = Field(1800.0, gt=0)
    max_runs: int = Field(0, ge=0, description="stop after this many runs (0: never)")


class SinkSettings(BaseModel):
    """The lake sink (``python -m serving.sink``, ``RECSTACK_SINK__*``)."""

    consumer: str = Field("", description="consumer name in the group; empty: the host name")
    # Chaos knob for tests: widens the window between the lake write and the XACK, where a
    # crash leaves written-but-pending entries.
    ack_delay_s: float = Field(0.0, ge=0)


class StackSettings(BaseModel):
    """The native stack: ports on loopback and the replica counts."""

    host: str = Field(
        "127.0.0.1",
        description="the loopback address every native service binds and is reached on "
        "(compose's monitor sets 0.0.0.0 to bind every interface of its container)",
    )
    lb_port: int = 18080
    prometheus_port: int = 19090
    api_base_port: int = 18100
    supervisor_port: int = 19001
    # The drift/freshness monitor's /metrics (scraped by Prometheus).
    monitor_port: int = 18190
    api_replicas: int = Field(2, ge=1, le=16)
    start_timeout_s: float = 90.0
    # Prometheus's HTTP /-/reload and /-/quit (--web.enable-lifecycle): off, since anyone who
    # can reach its port could stop it; the stack reloads it with SIGHUP instead.
    prometheus_lifecycle: bool = False
    # `recstack up`: re-materialize the online store from the offline tables when it is empty
    # or older than they are (a lost or new Redis) before the api starts.
    rematerialize_on_up: bool = True
    # On-request services `recstack up` starts with the rest (default none: a trainer
    # retraining in a loop would disturb load tests), e.g. RECSTACK_STACK__AUTOSTART='["monitor"]'.
    autostart: list[Literal["trainer", "monitor"]] = Field(default_factory=list)


class MonitorSettings(BaseModel):
    """The drift/freshness monitor (``recstack monitor``, ``RECSTACK_MONITOR__*``)."""

    interval_s: float = Field(30.0, gt=0, description="wall seconds between two checks")
    sample_users: int = Field(200, ge=1, description="active users whose features are read")
    sample_items: int = Field(200, ge=1, description="served items whose features are read")
    psi_threshold: float = Field(0.25, gt=0, description="PSI above this is drift")
    psi_min_rows: int = Field(100, ge=1, description="no PSI verdict on fewer sampled rows")
    ctr_drop: float = Field(0.15, gt=0, lt=1, description="online CTR this far below baseline")
    ctr_z: float = Field(3.0, gt=0, description="and this many standard errors below it")
    ctr_window_impressions: int = Field(2000, ge=100, description="latest impressions compared")
    ctr_baseline_impressions: int = Field(
        4000, ge=100, description="impressions just before the window: the lagged baseline")
    # The same CTR test per user segment (a users.parquet column of the lake, e.g. country;
    # None: off): a drop in one country is a fraction of the overall CTR but most of its own.
    # A smaller window (a segment has a share of the traffic), a longer baseline (so a drop
    # stays in contrast for several checks before the lagged baseline absorbs it), a stricter
    # z (every segment is tested at every check); tested once both are full.
    ctr_segment_by: Literal["country", "device"] | None = "country"
    ctr_segment_window_impressions: int = Field(1000, ge=100)
    ctr_segment_baseline_impressions: int = Field(3000, ge=100)
    ctr_segment_z: float = Field(3.5, gt=0)
    consecutive: int = Field(2, ge=1, description="checks in a row over a threshold to alert")
    retrain: bool = Field(True, description="run `recstack retrain` when drift is detected")
    # Signals (name prefixes) that may start a retraining; the others alert only. Feature PSI
    # alerts but does not retrain by default: the training reference comes from the logging
    # policy's exposure, so served-item features shift with any new model's exposure, and
    # count features with traffic volume (see monitoring/README.md).
    retrain_signals: list[str] = Field(default_factory=lambda: ["online_ctr_ratio"])
    # After a CTR drop, retrain again each cool-down (at most this often) until the online CTR
    # is back within ctr_drop of its level before the drop; each time only once this many
    # hours of a day after the last retraining's day have passed: the gate's holdout is the
    # newest day, so a retraining before any of the new day exists trains on the same days as
    # the last one (measured: the same AUC to four digits, rejected).
    max_episode_retrains: int = Field(3, ge=0)
    episode_new_day_hours: float = Field(4.0, ge=0, lt=24)
    cooldown_s: float = Field(3600.0, ge=0, description="no retraining sooner after the last")
    retrain_timeout_s: float = Field(1800.0, gt=0)


class LoadSettings(BaseModel):
    """The demo's headless Locust run."""

    users: int = 100
    spawn_rate: float = 100.0
    duration_s: int = 30
    # Requests per second of each Locust user: 100 x 1 = 100 RPS, two thirds of the 2-replica
    # open-loop knee at p99 <= 100 ms on 2 cores (152 RPS, app/experiments/loadlab/README.md),
    # so the demo shows latency, not overload.
    # 0: each user sends as fast as it is answered.
    user_rps: float = Field(1.0, ge=0)
    # poisson: open loop, each user's requests due at Poisson arrivals, latency from the due
    # time; paced: a fixed period per user (loadtests/pacing.py).
    arrivals: Literal["poisson", "paced"] = "poisson"
    # GETs sent to each replica directly before the measured run.
    warmup_requests: int = Field(100, ge=0)


class OnlineExperimentSettings(BaseModel):
    """The online experiment at the API (``RECSTACK_AB__*``): which arm a user sees, and how the
    analysis decides. Arms name model versions: an alias (``champion``, ``challenger``) or a
    ranker version number (its candidates model is the one registered by the same run)."""

    mode: Literal["off", "ab", "canary", "shadow"] = "off"
    name: str = Field("ab", pattern=r"^[a-z0-9_-]{1,32}$")
    salt: str = Field("recstack-ab-1", min_length=1, description="new salt = new assignment")
    control: str = "champion"
    treatment: str = "challenger"
    treatment_weight: float = Field(0.5, ge=0, le=1, description="share of users (ab mode)")
    canary_weight: float = Field(0.05, ge=0, le=1, description="share of users (canary mode)")
    poll_s: float = Field(30.0, gt=0, description="how often arm aliases are re-resolved")
    # Canary SLO over the last canary_window requests of the canary arm.
    canary_window: int = Field(200, ge=10)
    canary_min_requests: int = Field(50, ge=1)
    canary_max_error_rate: float = Field(0.05, ge=0, le=1)
    canary_p99_ms: float = Field(100.0, gt=0)
    shadow_queue: int = Field(64, ge=1, description="shadow requests waiting; more are dropped")
    # Analysis: fixed-horizon test at alpha, sized for a relative lift of mde at this power.
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    mde: float = Field(0.05, gt=0, description="minimum detectable relative CTR lift")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="guardrail per arm")
    max_p99_ms: float = Field(100.0, gt=0, description="guardrail per arm")
    min_coverage_ratio: float = Field(
        0.5, ge=0, description="treatment catalogue coverage / control's must stay above")


class Settings(BaseSettings):
    """All of recstack's configuration; see the module docstring for the environment names."""

    model_config = SettingsConfigDict(
        env_prefix="RECSTACK_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Path("var")
    log_level: str = "INFO"
    log_json: bool = False
    sim: SimSettings = SimSettings()
    redis: RedisSettings = RedisSettings()
    mlflow: MlflowSettings = MlflowSettings()
    feast: FeastSettings = FeastSettings()
    pipeline: PipelineSettings = PipelineSettings()
    train: TrainSettings = TrainSettings()
    serving: ServingSettings = ServingSettings()
    events: EventSettings = EventSettings()
    seen: SeenSettings = SeenSettings()
    sink: SinkSettings = SinkSettings()
    gate: GateSettings = GateSettings()
    trainer: TrainerSettings = TrainerSettings()
    stack: StackSettings = StackSettings()
    load: LoadSettings = LoadSettings()
    monitor: MonitorSettings = MonitorSettings()
    ab: OnlineExperimentSettings = OnlineExperimentSettings()

    @model_validator(mode="after")
    def _redis_password_file_under_home(self) -> "Settings":
        if self.redis.password_file is None:
            self.redis.password_file = self.run_dir / "redis.secret"
        return self

    # Where each kind of state lives under ``home``.
    @property
    def root(self) -> Path:
        return self.home.resolve()

    @property
    def lake_dir(self) -> Path:
        return self.root / "lake"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def feast_dir(self) -> Path:
        return self.root / "feast"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"

    def feast_env(self) -> dict[str, str]:
        """Environment variables that ``feature_repo/feature_store.yaml`` expands."""
        return {
            "RECSTACK_FEAST_PROJECT": self.feast.project,
            "RECSTACK_FEAST_REGISTRY": str(self.feast_dir / "registry.db"),
            "RECSTACK_FEAST_REDIS": self.redis.feast_connection_string,
            "RECSTACK_FEAST_REDIS_TYPE": self.feast.redis_type,
            "RECSTACK_FEATURES_DIR": str(self.features_dir),
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
