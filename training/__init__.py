"""training: candidate model + faiss index, LightGBM ranker, evaluation, MLflow registry.

``from training import train_and_register`` is the entrypoint; it is imported lazily so that
``import training.evaluate`` does not pull in MLflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train_and_register"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from training import train

        return getattr(train, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
