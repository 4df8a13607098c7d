"""Pruning: scores and masks (criteria.py), masks held through the one training loop
(callback.py), sparse storage as bitmask + values (sparse.py), and the ``prune`` step (step.py).
See docs/pruning.md."""
