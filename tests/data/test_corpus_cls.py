"""The corpus-cls rows (``data.text.corpus_classification``)."""

import pytest

from slimkit.data.text import CORRUPTIONS, corpus_classification


def test_variants_add_rows_without_changing_training_rows_or_first_variants():
    rows = corpus_classification()
    assert {k: len(v[0]) for k, v in rows.items()} == {"train": 4972, "val": 2000, "test": 4000}
    one = corpus_classification(val_variants=1, test_variants=1)
    assert rows["train"] == one["train"]
    for split, n in (("val", 500), ("test", 1000)):
        assert rows[split][0][:n] == one[split][0] and rows[split][1][:n] == one[split][1]
        assert set(rows[split][1]) == set(range(len(CORRUPTIONS)))
        assert rows[split][0][n:] != rows[split][0][:n] * (len(rows[split][0]) // n - 1)  # new draws, not copies
    assert corpus_classification(test_variants=1)["val"] == rows["val"]
    assert corpus_classification(seed=1)["test"] != rows["test"]
    with pytest.raises(ValueError, match="test_variants must be >= 1"):
        corpus_classification(test_variants=0)
