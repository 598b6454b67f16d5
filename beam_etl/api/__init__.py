"""The control plane (REST API, dashboard): built by a later issue."""
