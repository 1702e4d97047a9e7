"""Alias moves never leave a mixed pair behind (a fake client: no server)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from recstack.settings import Settings
from training import registry


class FakeClient:
    def __init__(self, aliases: dict[str, str], fail_on: str | None = None) -> None:
        self.aliases = dict(aliases)  # model name -> version of "champion"
        self.fail_on = fail_on
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        if name not in self.aliases:
            raise MlflowException(f"Registered model alias {alias} not found.",
                                  INVALID_PARAMETER_VALUE)  # as MLflow's stores answer
        return SimpleNamespace(version=self.aliases[name])

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault((name, version), {})[key] = value

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if name == self.fail_on:
            raise MlflowException("registry went away")
        self.aliases[name] = version

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.aliases.pop(name, None)


def test_promote_pair_moves_both_and_records_why() -> None:
    client = FakeClient({"candidates": "1", "ranker": "1"})
    registry.promote_pair(client, Settings(), {"candidates": "2", "ranker": "2"}, "better", "gate")
    assert client.aliases == {"candidates": "2", "ranker": "2"}
    assert client.tags[("ranker", "2")]["gate_reason"] == "better"
    assert client.tags[("ranker", "2")]["promoted_by"] == "gate"


@pytest.mark.parametrize("before", [{"candidates": "1", "ranker": "1"}, {}])
def test_a_failure_half_way_puts_the_old_pair_back(before) -> None:
    client = FakeClient(before, fail_on="ranker")
    with pytest.raises(MlflowException):
        registry.promote_pair(client, Settings(), {"candidates": "2", "ranker": "2"}, "x", "gate")
    assert client.aliases == before
