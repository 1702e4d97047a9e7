"""deploy/k8s, the cluster description: every object valid against the Kubernetes schema
(kubernetes-validate, strict: an unknown field fails), the same services and commands as
docker-compose.yml, and what a production serving tier needs (probes, requests and limits, an
autoscaler and a disruption budget for the API, secrets from a Secret)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from recstack.settings import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
K8S_VERSION = "1.32.0"
# compose service -> the cluster object that runs it (the rest of compose is the local
# toolbox: nginx is the Service, Prometheus, Grafana and Locust are the cluster's own).
SAME_COMMAND = ("redis", "mlflow", "bootstrap", "api", "candidates", "ranking", "sink")
# The compose trainer is a loop (`recstack trainer`); in the cluster a CronJob runs one retrain
# per schedule, and the monitor reaches the API through its Service instead of nginx.
CHANGED_COMMAND = {"trainer": ["python", "-m", "app.cli", "retrain"],
                   "monitor": ["python", "-m", "app.cli", "monitor", "--api-url",
                               "http://api:8000"]}


def build(folder: Path = K8S) -> list[dict[str, Any]]:
    """The kustomization's objects: ``kubectl kustomize`` when installed, else its resources."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = [d for name in spec["resources"] for d in yaml.safe_load_all((folder / name).read_text())
            if d]
    for gen in spec.get("configMapGenerator", []):  # what kustomize would generate
        data = dict(literal.split("=", 1) for literal in gen.get("literals", []))
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"]}, "data": data})
    return docs


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    if "template" not in spec:
        return []
    return spec["template"]["spec"]["containers"]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return build()


@pytest.fixture(scope="module")
def workloads(objects) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if containers(o)}


def test_every_object_is_valid_against_the_schema(objects) -> None:
    assert len(objects) >= 20
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert problems == []


def test_the_validation_sees_a_misspelt_field(workloads) -> None:
    api = yaml.safe_load(yaml.safe_dump(workloads["api"]))
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(kubernetes_validate.ValidationError):  # httpGet without its port
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)
    typo = yaml.safe_load(yaml.safe_dump(workloads["api"]))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 2}
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: an unknown field
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_the_same_services_and_commands_as_compose(workloads) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    for name in SAME_COMMAND:
        (container,) = containers(workloads[name])
        assert (container.get("command") or []) == compose[name]["command"], name
    for name, command in CHANGED_COMMAND.items():
        assert name in compose
        (container,) = containers(workloads[name])
        assert container["command"] == command, name
    assert workloads["pipeline"]["kind"] == "CronJob"
    (pipeline,) = containers(workloads["pipeline"])
    assert pipeline["command"] == ["python", "-m", "app.cli", "pipeline"]
    assert {workloads[n]["kind"] for n in ("redis", "postgres")} == {"StatefulSet"}


def test_long_running_pods_have_probes_requests_and_limits(workloads) -> None:
    for name, obj in workloads.items():
        for c in containers(obj):
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            if obj["kind"] in ("Deployment", "StatefulSet"):
                assert "readinessProbe" in c and "livenessProbe" in c, name
    (api,) = containers(workloads["api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_api_scales_and_survives_disruptions(objects) -> None:
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    hpa = by_kind[("HorizontalPodAutoscaler", "api")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "api" and hpa["minReplicas"] >= 2
    pdb = by_kind[("PodDisruptionBudget", "api")]["spec"]
    assert pdb["minAvailable"] >= 1


def test_secrets_come_from_a_secret_and_config_from_a_configmap(objects, workloads) -> None:
    text = yaml.safe_dump_all(objects)
    assert "password" not in yaml.safe_dump(
        next(o for o in objects if o["kind"] == "ConfigMap")["data"]).lower()
    for name in ("api", "sink", "mlflow", "redis"):
        (c,) = containers(workloads[name])
        secret_refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                       if "valueFrom" in e]
        assert secret_refs and set(secret_refs) == {"recstack-secrets"}, name
    assert "kind: Secret\n" not in text  # created by the operator, never committed
