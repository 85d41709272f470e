"""Streamgroup's sidecar: deliver a Redis consumer group to an HTTP app, at least once."""

__version__ = "0.1.0"
