"""Model -> model transforms, one family per folder. Importing this package registers them."""

from slimkit.techniques import fusion  # noqa: F401
