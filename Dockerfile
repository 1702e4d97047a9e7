# recstack: one image for every project service (mlflow, bootstrap, api, locust); docker-compose.yml
# picks the role with `command:`. The default command serves the API.
#
#   docker build -t recstack:latest .
#   docker run --rm recstack:latest recstack --help
#
# PYTHON_IMAGE lets a builder without registry access use a locally built Debian + Python 3.11 base.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the pinned dependencies and the recstack wheel -------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from the metadata alone: this (slow, ~1 GB) layer is rebuilt only when
# pyproject.toml or the lock change, not on every source edit. The `postgres` extra carries the
# MLflow backend-store driver (psycopg2-binary).
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p.get('optional-dependencies', {}).get('postgres', [])))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt

# Then the project itself (packages listed in pyproject's [tool.setuptools]); dependencies are
# already satisfied, so this layer only builds and installs the wheel.
COPY README.md ./
COPY recstack/ recstack/
COPY simulator/ simulator/
COPY pipelines/ pipelines/
COPY training/ training/
COPY serving/ serving/
COPY monitoring/ monitoring/
COPY app/ app/
RUN pip install -c constraints.txt ".[postgres]" && pip check

# ---- runtime: the virtualenv, the files outside the wheel, a non-root user --------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="recstack" \
      org.opencontainers.image.description="A production recommender on one laptop: Beam, Feast, MLflow, FastAPI, Prometheus, Locust." \
      org.opencontainers.image.licenses="Apache-2.0"

# LightGBM's wheel links the OpenMP runtime but does not bundle it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid so volume ownership is stable across rebuilds. /var/recstack is created
# here, owned by that user, so a fresh named volume mounted on it inherits the ownership.
RUN groupadd --system --gid 10001 recstack \
    && useradd --system --uid 10001 --gid recstack --home-dir /opt/recstack --no-create-home \
        --shell /usr/sbin/nologin recstack \
    && mkdir -p /var/recstack \
    && chown recstack:recstack /var/recstack

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIT_PYTHON_REFRESH=quiet \
    RECSTACK_HOME=/var/recstack \
    RECSTACK_FEAST__REPO_PATH=/opt/recstack/feature_repo

COPY --from=build /opt/venv /opt/venv

# feature_repo/ (Feast definitions) and loadtests/ (locustfiles) stay outside the wheel;
# they are read-only here (owned by root): all state goes to RECSTACK_HOME.
WORKDIR /opt/recstack
COPY feature_repo/ feature_repo/
COPY loadtests/ loadtests/
# The compose bootstrap (fills in only what the volumes lack); a script, not part of the wheel.
COPY docker/bootstrap.py docker/bootstrap.py

USER 10001:10001
EXPOSE 8000
CMD ["uvicorn", "serving.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
