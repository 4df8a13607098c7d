"""Budgeted search: score each unit alone (``sensitivity``), then allocate options under a budget.

The allocators are pure functions of the table: ``fewest_promotions`` (bisection over an ordered
list of promotions), ``greedy`` (most cost saved per point of drop), ``threshold`` (Distiller's
loss threshold bisected to meet a cost) and ``knapsack`` (exact multiple-choice knapsack);
``tighten`` verifies an allocation on the whole model and tightens it until it passes.
"""

from slimkit.search.greedy import greedy
from slimkit.search.knapsack import knapsack
from slimkit.search.progress import scan_progress
from slimkit.search.promotions import fewest_promotions
from slimkit.search.scan import Progress, sensitivity
from slimkit.search.table import Budget, Option, Table, most_sensitive_first, solo_drops
from slimkit.search.threshold import threshold, under_threshold
from slimkit.search.verify import tighten

__all__ = ["Budget", "Option", "Progress", "Table", "fewest_promotions", "greedy", "knapsack", "most_sensitive_first",
           "scan_progress", "sensitivity", "solo_drops", "threshold", "tighten", "under_threshold"]
