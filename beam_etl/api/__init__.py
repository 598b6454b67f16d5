"""The control plane: the REST API (``python -m beam_etl.api``, ``app.create_app``); see docs/api.md."""
