"""Streamgroup's operator: StreamGroup resources become consumer groups and autoscaled Deployments."""

__version__ = "0.1.0"
