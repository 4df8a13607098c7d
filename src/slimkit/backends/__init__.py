"""Runtimes a model is measured on; one file each, optional packages imported inside it."""

from slimkit.backends import eager  # noqa: F401  (registration side effects)
