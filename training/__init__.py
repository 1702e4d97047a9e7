"""training: candidate model + faiss index, LightGBM ranker, evaluation, MLflow registry.

``training.train.train_and_register`` is the entrypoint (``recstack train``);
``training.registry`` is the MLflow side, ``training.evaluate`` the offline metrics.
"""
