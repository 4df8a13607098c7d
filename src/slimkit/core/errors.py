"""Errors that slimkit raises on purpose; each carries a one-line, user-facing message."""

from __future__ import annotations


class SlimkitError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero, without a traceback."""


class ConfigError(SlimkitError, ValueError):
    """A recipe or config field with a wrong name, type or value."""


class UnknownNameError(ConfigError, KeyError):
    """A task, step, model or backend name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(SlimkitError):
    """A checkpoint or run directory that is missing, corrupt, or does not match the recipe."""


class BackendUnavailableError(SlimkitError):
    """A backend whose optional dependency is not installed or whose hardware is absent."""


class UnsupportedModelError(SlimkitError):
    """A step or runtime that cannot apply to this model; the message says why in one line."""
