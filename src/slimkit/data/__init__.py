"""Built-in datasets (digits, MNIST, procedural shapes, a text corpus) and their common shape."""

from slimkit.data.base import DataSplits, Split, stratified_split

__all__ = ["DataSplits", "Split", "stratified_split"]
