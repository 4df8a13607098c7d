"""Core contracts shared by every part of slimkit: errors, registries, configs, I/O."""
