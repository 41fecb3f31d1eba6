"""The operator console (SPEC §12): an HTTP server inside ``run.py`` beside the actors.

It serves the dashboard (``/``), a JSON API under ``/api/`` (OpenAPI schema at
``/api/openapi.json``), the operator actions (close one position, flatten, halt, resume, reset
the kill switch: each needs the operator token), ``/metrics`` in the Prometheus text format,
``/healthz`` and ``/readyz``. It reaches the actors only through ``actors.system.System``'s
public methods, which ask with a timeout; nothing here reads an actor's state.

Modules: ``views`` (pure: positions and status as the dashboard and the API show them),
``token`` (the operator token), ``metrics`` (the Prometheus collector), ``app`` (routes),
``server`` (uvicorn on its own thread), ``static/`` (the page, and uPlot, vendored with its
licence).
"""
