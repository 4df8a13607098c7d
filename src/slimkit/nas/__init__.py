"""Neural architecture search: strategies as Optuna samplers, offline benchmarks, the ``nas`` step."""
