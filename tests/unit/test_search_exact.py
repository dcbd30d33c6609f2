"""utils/search/exact.py: the knapsack DP equals brute force, and beats/ties the EA."""
from __future__ import annotations

import numpy as np
import pytest

from utils.search.evolution import EASettings, Evolution
from utils.search.exact import brute_force, solve
from utils.flops.table import load_table
from utils.flops.limits import cost_range, default_flops_limit
from utils.spaces import IMAGENET, SPACES, get_space, make_config


def random_problem(rng: np.random.Generator, integer_scores: bool = False):
    layers = int(rng.integers(4, 7))
    ops = int(rng.integers(2, 5))
    cols = ops + 1  # last column: skip
    allowed = rng.random((layers, cols)) < 0.7
    allowed[:, -1] = rng.random(layers) < 0.3
    for i in range(layers):
        if not allowed[i].any():
            allowed[i, rng.integers(0, cols)] = True
    if integer_scores:  # many exact ties
        score = rng.integers(0, 4, (layers, cols)).astype(float)
    else:
        score = rng.uniform(0, 1, (layers, cols))
    flops = rng.integers(10, 100, (layers, cols))
    params = rng.integers(1, 50, (layers, cols))
    score[:, -1], flops[:, -1], params[:, -1] = 0, 0, 0
    return score, flops, params, allowed


def check_against_brute_force(score, flops, params, allowed, f_lim, p_lim, base_f, base_p):
    got = solve(score, flops, allowed, f_lim, params=params, params_limit=p_lim,
                base_flops=base_f, base_params=base_p)
    want = brute_force(score, flops, allowed, f_lim, params=params, params_limit=p_lim,
                       base_flops=base_f, base_params=base_p)
    if want is None:
        assert got is None
        return 0
    assert got is not None
    assert got.score == pytest.approx(want[1], abs=1e-9)
    rows = np.arange(score.shape[0])
    cols = np.array([score.shape[1] - 1 if a == -1 else a for a in got.arch])
    assert allowed[rows, cols].all()
    assert got.flops == base_f + flops[rows, cols].sum() <= f_lim
    if p_lim is not None:
        assert got.params == base_p + params[rows, cols].sum() <= p_lim
    assert score[rows, cols].sum() == pytest.approx(got.score, abs=1e-9)
    return 1


@pytest.mark.parametrize("with_params", [False, True])
@pytest.mark.parametrize("integer_scores", [False, True])
def test_exact_equals_brute_force_on_small_spaces(with_params, integer_scores):
    rng = np.random.default_rng(10 * with_params + integer_scores)
    solved = 0
    for _ in range(150):
        score, flops, params, allowed = random_problem(rng, integer_scores)
        base_f, base_p = int(rng.integers(0, 50)), int(rng.integers(0, 20))
        lo = base_f + sum(flops[i][allowed[i]].min() for i in range(len(flops)))
        hi = base_f + sum(flops[i][allowed[i]].max() for i in range(len(flops)))
        f_lim = float(rng.uniform(lo - 20, hi + 10))  # sometimes infeasible, sometimes loose
        p_lim = None
        if with_params:
            plo = base_p + sum(params[i][allowed[i]].min() for i in range(len(params)))
            phi = base_p + sum(params[i][allowed[i]].max() for i in range(len(params)))
            p_lim = float(rng.uniform(plo - 5, phi))
        solved += check_against_brute_force(score, flops, params, allowed, f_lim, p_lim,
                                             base_f, base_p)
    assert solved > 100  # most instances feasible, so the optimum itself was compared


@pytest.mark.parametrize("space_name", ["mobilenet", "shufflenet"])
def test_exact_at_least_ea_best_on_full_imagenet_spaces(space_name):
    cfg = make_config(space_name, **IMAGENET)
    space, table = get_space(cfg), load_table(cfg)
    limit = SPACES.get(space_name).published_limit_m * 1e6
    plo, phi = cost_range(space, table, "params")
    for seed in range(3):
        m = np.random.default_rng(seed).uniform(0.2, 1.0, (space.num_layers, space.num_ops + 1))
        m[:, -1] = 0
        p_lim = None if seed < 2 else (plo + phi) / 2
        ea = Evolution(space, EASettings(seed=seed), lambda a: m[np.arange(a.shape[1]), a].sum(1),
                       lambda a: (table.flops_of(a), table.params_of(a)), limit, p_lim,
                       log=lambda s: None)
        ea.run()
        _, best = ea.best()
        res = solve(m, table.flops, space.allowed_mask(), limit, params=table.params,
                    params_limit=p_lim, base_flops=table.base_flops,
                    base_params=table.base_params)
        assert res.score >= best["score"] - 1e-12
        assert res.flops == table.flops_of(res.arch) <= limit
        assert p_lim is None or table.params_of(res.arch) <= p_lim
        space.validate(res.arch)


def test_default_limits_follow_the_published_ones():
    assert default_flops_limit(make_config("mobilenet", **IMAGENET))[0] == 475.0
    assert default_flops_limit(make_config("shufflenet", **IMAGENET))[0] == 330.0
    cfg = make_config("mobilenet", **IMAGENET)
    lo, hi = cost_range(get_space(cfg), load_table(cfg))
    # 393.4M .. 849.6M: docs/method.md, "Counting FLOPs and parameters"
    assert round(lo / 1e5) == 3934 and round(hi / 1e5) == 8496
