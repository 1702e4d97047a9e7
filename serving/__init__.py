"""serving: the two-stage recommendation API (candidates, then ranking).

Start one replica with ``uvicorn serving.app:create_app --factory --host 127.0.0.1 --port P``.
"""
