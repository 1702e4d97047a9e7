"""recstack's kernel: the contracts every stage shares (settings, schemas, the lake layout, the
simulated clock, logging, Feast's online layout, MLflow's client defaults). It imports no stage
and nothing of the composition root (``app``); see docs/architecture.md.
"""

__version__ = "0.1.0"
