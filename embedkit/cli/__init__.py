"""The ``embedkit`` command line: one thin module per command group over the library."""

from .app import app, main

__all__ = ["app", "main"]
