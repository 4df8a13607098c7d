"""The corpus-cls rows (``data.text.corpus_classification``)."""

import pytest

from slimkit.data.text import CORRUPTIONS, corpus_classification


def test_validation_variants_add_rows_without_changing_training_or_test_rows():
    rows = corpus_classification()
    assert {k: len(v[0]) for k, v in rows.items()} == {"train": 4972, "val": 2000, "test": 1000}
    one = corpus_classification(val_variants=1)
    assert rows["train"] == one["train"] and rows["test"] == one["test"]
    assert rows["val"][0][:500] == one["val"][0] and rows["val"][1][:500] == one["val"][1]
    assert set(rows["val"][1]) == set(range(len(CORRUPTIONS)))
    assert corpus_classification(seed=1)["test"] != rows["test"]
    with pytest.raises(ValueError, match="val_variants must be >= 1"):
        corpus_classification(val_variants=0)
