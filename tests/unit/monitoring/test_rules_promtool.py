"""monitoring/rules.yml is valid (promtool check rules) and its alerts behave as intended on
unit-test series (promtool test rules monitoring/rules_test.yml: burn rates, breaker, pipeline)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from recstack.settings import REPO_ROOT
from tests.conftest import need_binary

RULES = REPO_ROOT / "monitoring" / "rules.yml"
RULE_TESTS = REPO_ROOT / "monitoring" / "rules_test.yml"


def _promtool(*args: str | Path) -> subprocess.CompletedProcess:
    binary = need_binary("promtool")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                          cwd=RULES.parent, timeout=120)


def test_rules_pass_promtool_check() -> None:
    proc = _promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass() -> None:
    proc = _promtool("test", "rules", RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_expectation_fails(tmp_path: Path) -> None:
    """The promtool tests can fail: expecting no fast-burn page at 20% errors is refused."""
    spec = yaml.safe_load(RULE_TESTS.read_text())
    spec["rule_files"] = [str(RULES)]
    spec["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(spec))
    proc = _promtool("test", "rules", broken)
    assert proc.returncode != 0


def test_every_required_alert_exists() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules if "alert" in r}
    for name in ("AvailabilitySLOBurnFast", "AvailabilitySLOBurnSlow", "LatencySLOBurnFast",
                 "LatencySLOBurnSlow", "AvailabilitySLOBurnFastSim", "LatencySLOBurnSlowSim",
                 "RedisBreakerOpen", "FallbackRateHigh", "ModelStale", "FeaturesNotFresh",
                 "PipelineFailed", "FeatureDrift"):
        assert name in alerts, name
    records = {r["record"] for r in rules if "record" in r}
    assert "recstack:stage_duration_seconds:p99_1m" in records
    assert "recstack:request_rate:rate1m" in records
