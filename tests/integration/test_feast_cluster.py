"""Feast's Redis online store on a 3-node local Redis Cluster: materialize, read back, rewrite."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipelines.run import run_all
from recstack.featurestore import open_store
from recstack.schemas import USER_FEATURES
from tests.conftest import free_port, need_binary, stop_process, wait_for_port
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.cluster, pytest.mark.slow]

DAY2 = DAY1 + dt.timedelta(days=1)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[int]]:
    """Three redis-server masters in cluster mode on free loopback ports; yields the ports."""
    server, cli = need_binary("redis-server"), need_binary("redis-cli")
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            workdir = tmp_path / f"node-{port}"
            workdir.mkdir()
            procs.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 # The bus defaults to port + 10000, which may not exist: pick a free one.
                 "--cluster-port", str(free_port()),
                 "--cluster-config-file", str(workdir / "nodes.conf"), "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        for port, proc in zip(ports, procs):
            wait_for_port(port, 10, proc)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while b"cluster_state:ok" not in redis.Redis(port=ports[0]).execute_command(
                "CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.2)
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)


def test_materialize_into_a_redis_cluster_and_read_back(settings, redis_cluster, tmp_path):
    s = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"port": redis_cluster[0]}),
        # The setting alone switches Feast's online store to the cluster client.
        "feast": settings.feast.model_copy(update={"project": "cluster_it",
                                                   "redis_type": "redis_cluster"}),
    })
    events = []
    for user in range(1, 41):  # enough keys to land on every node's slots
        events += shown_and_clicked(at(DAY1, 9), user, 100 + user % 7, f"r{user}",
                                    clicked=user % 3 == 0)
    write_lake(s.lake_dir, events, batch_key="d1")
    result = run_all(s)
    assert result["materialized"]["user_features"] == 40

    store = open_store(s)
    rows = store.get_online_features(features=[f"user_features:{f}" for f in USER_FEATURES],
                                     entity_rows=[{"user_id": u} for u in (3, 4)]).to_dict()
    assert rows["user_clicks_7d"] == [1, 0] and rows["user_impressions_7d"] == [1, 1]
    sizes = [redis.Redis(port=p).dbsize() for p in redis_cluster]
    assert all(n > 0 for n in sizes), sizes  # keys are spread over the three masters

    # A late click of day 1 rewrites an already-materialized snapshot: the stored timestamps
    # are cleared through the cluster client, and the new value is served.
    write_lake(s.lake_dir, shown_and_clicked(at(DAY1, 20), 4, 100, "late", clicked=True),
               batch_key="late")
    again = run_all(s, max_row_swing=None)
    assert again["modes"]["user_features"] == "rewrite"
    rows = open_store(s).get_online_features(
        features=["user_features:user_clicks_7d"], entity_rows=[{"user_id": 4}]).to_dict()
    assert rows["user_clicks_7d"] == [1]
