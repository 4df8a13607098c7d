"""Weight sharing: per-layer k-means clustering with codebook + packed-code storage (issue 8)."""
