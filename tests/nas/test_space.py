"""Search spaces over architecture specs."""

from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.nas.search import finished, search
from slimkit.nas.space import SearchSpace
from slimkit.zoo.arch import build_arch

SPACE = {"base": ["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24", "ir_r2_k3_s2_e6_c32"],
         "stages": [{}, {"depth": [1, 2, 3], "kernel": [3, 5]},
                    {"block": ["ir", "ds", "shuffle"], "width": [0.5, 1.0], "se": [0, 0.25], "expand": [6]}]}


def test_dimensions_and_specs_follow_the_choices():
    space = SearchSpace(**SPACE)
    dims = space.dimensions()
    assert dims == {"s1.depth": [1, 2, 3], "s1.kernel": [3, 5], "s2.block": ["ir", "ds", "shuffle"],
                    "s2.width": [0.5, 1.0], "s2.se": [0, 0.25]}
    assert space.size() == 3 * 2 * 3 * 2 * 2
    spec = space.spec({"s1.depth": 3, "s1.kernel": 5, "s2.block": "ir", "s2.width": 0.5, "s2.se": 0.25})
    assert spec.strings() == ["ir_r1_k3_s1_e1_c16_relu6", "ir_r3_k5_s2_e6_c24_relu6",
                              "ir_r2_k3_s2_e6_c16_se0.25_relu6"]
    ds = space.spec({"s2.block": "ds", "s2.se": 0.25})  # se and expand do not apply to ds: dropped
    assert ds.stages[2].block == "ds" and ds.stages[2].se == 0 and ds.stages[2].expand == 1
    net = build_arch(space.spec({"s2.block": "shuffle"}), num_classes=4)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_impossible_candidates_and_bad_spaces_are_refused():
    space = SearchSpace(base=["ir_r1_c16", "shuffle_r1_s1_c32"], stages=[{}, {"width": [1.0, 0.5]}])
    with pytest.raises(ConfigError, match="stage 1: a stride-1 shuffle stage keeps its width"):
        space.spec({})
    with pytest.raises(ConfigError, match="not dimensions"):
        SearchSpace(**SPACE).spec({"s0.depth": 2})
    with pytest.raises(ValueError, match="repeat"):
        SearchSpace(base=["ir_r1_c16"], stages=[{"depth": [1, 1]}])
    with pytest.raises(ValueError, match="2 stage choice sets for 1"):
        SearchSpace(base=["ir_r1_c16"], stages=[{}, {}])


def test_a_strategy_searches_the_space_through_specs():
    space = SearchSpace(**SPACE)

    def fewer_params(params):  # a cheap objective: the smallest network (built from its spec)
        return -sum(p.numel() for p in build_arch(space.spec(params), num_classes=4).parameters())

    best = max(finished(search(fewer_params, space.dimensions(), "tpe", 30, seed=0)), key=lambda t: t.value)
    assert best.params["s1.depth"] == 1 and best.params["s2.width"] == 0.5
