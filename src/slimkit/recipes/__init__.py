"""Recipes: the YAML schema and validator, the runner (measure, checkpoint, resume), the report."""
