"""The native stack: the docker-compose services as local processes under supervisord.

``app.stack.runner`` holds ``up`` / ``down`` / ``status`` / ``scale`` / ``stop_service`` /
``start_service`` / ``urls`` / ``wait_ready``, what the ``recstack`` CLI calls;
``app.stack.services`` the programs; ``app.stack.loadtest.run_locust`` runs Locust headless.
"""
