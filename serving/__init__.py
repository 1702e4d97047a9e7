"""serving: the two-stage recommendation API (candidates, then ranking), and the lake sink.

One API replica: ``uvicorn serving.app:create_app --factory --host 127.0.0.1 --port P``.
Split mode (``RECSTACK_SERVING__MODE=split``): the API calls ``serving.app:create_candidates_app``
and ``serving.app:create_ranking_app`` over HTTP. The sink: ``python -m serving.sink``.
"""
