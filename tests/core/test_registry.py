import pytest

from slimkit.core.errors import SlimkitError, UnknownNameError
from slimkit.core.registry import STEPS, TASKS, Registry


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match=r"unknown task 'digits-cn'; did you mean 'digits-cnn'"):
        TASKS.get("digits-cn")


def test_unknown_name_without_match_lists_known():
    with pytest.raises(UnknownNameError, match=r"known: .*train"):
        STEPS.get("zzzz")


def test_double_registration_is_an_error():
    reg: Registry = Registry("thing")
    reg.register("a")(object())
    with pytest.raises(SlimkitError, match="registered twice"):
        reg.register("a")(object())


def test_builtins_are_registered():
    assert {"digits-mlp", "digits-cnn", "mnist-mlp", "mnist-lenet5", "shapes-cnn", "minilm", "custom"} <= set(TASKS.names())
    assert "train" in STEPS


def test_summary_is_the_docstrings_first_whole_sentence():
    reg = Registry("thing")

    @reg.register("a")
    def a():
        """Prune weights, e.g. by magnitude, then
        fine-tune them. Details follow."""

    assert reg.entry("a").summary == "Prune weights, e.g. by magnitude, then fine-tune them."

