"""The gateway's HTTP API: versioned resource blueprints (``v1``) and the service routes."""
