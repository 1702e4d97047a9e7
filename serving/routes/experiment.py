"""``GET /experiment``: this replica's online experiment (arms, weights, versions, rollbacks)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.deps import ExperimentDep
from serving.responses import json_response

router = APIRouter(tags=["experiment"])


@router.get("/experiment")
async def get_experiment(experiment: ExperimentDep) -> Response:
    """``{"mode": "off"}`` without an experiment; else its arms and what happened to them."""
    if experiment is None:
        return json_response({"mode": "off"})
    return json_response(experiment.describe())
