"""Bayesian compression: sparse variational dropout."""
