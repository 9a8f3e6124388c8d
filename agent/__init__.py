"""edge-agent daemon: sources, pipeline, model manager, control API, CLI, systemd notify."""

__version__ = "0.1.0"
