"""Sparse training from the start: static/SNIP/RigL masks and lottery tickets."""
