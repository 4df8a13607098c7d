"""Dynamic computation: early exits (more to come: adaptive computation time, layer skipping)."""
