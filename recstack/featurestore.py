"""Open the Feast feature store described by ``feature_repo/`` with this process's settings.

``feature_repo/feature_store.yaml`` reads its paths and the Redis address from environment
variables (Feast expands ``${VAR}``); this module sets them from :class:`Settings` so that the
CLI (``feast -c feature_repo apply``) and the Python SDK see one configuration.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from feast import FeatureStore

from recstack.settings import Settings

if TYPE_CHECKING:  # feast is heavy: import it only when a store is opened
    from feast import FeatureStore


def open_store(settings: Settings) -> "FeatureStore":
    """A FeatureStore over ``settings.feast.repo_path`` (sets the yaml's env variables)."""
    os.environ.update(settings.feast_env())
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feast.repo_path))
