"""Dramaverse: an actor-based real-time backend for drama and movie communities, on Trio."""

__version__ = "0.1.0"
