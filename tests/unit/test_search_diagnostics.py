"""Per-layer indicator spread and the warning about layers it cannot rank."""
from __future__ import annotations

import numpy as np
import pytest

from tests.search_helpers import (_tables_env, read_json, save_supernet,  # noqa: F401
                                  search_table_dir, tiny_config)
from utils.search.diagnostics import diagnose, layer_spreads, spread_lines
from utils.spaces import get_space, make_config

CFG = make_config("mobilenet", input_size=32, width_mult=0.5, classes=10, stem_stride=1)


def _matrix(space, flat_from: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    m = np.zeros((space.num_layers, space.num_ops + 1))
    m[:, :space.num_ops] = 1.0 + rng.uniform(-0.1, 0.1, (space.num_layers, space.num_ops))
    m[flat_from:, :space.num_ops] = 1.0  # gammas never moved: all equal
    return m


def test_spreads_are_max_minus_min_over_allowed_ops():
    space = get_space(CFG)
    m = _matrix(space, space.num_layers)
    spreads = layer_spreads(space, m)
    for i, v in enumerate(spreads):
        if i in CFG.fixed_skips:
            assert v is None
        else:
            ops = m[i, :space.num_ops]
            assert v == pytest.approx(ops.max() - ops.min())


def test_equal_gammas_in_the_last_layers_are_flagged():
    space = get_space(CFG)
    diag = diagnose(space, _matrix(space, 13))
    assert diag["flat_layers"] == list(range(13, 21))
    assert "8 of 17 searchable layers" in diag["warning"]
    assert "layers 13, 14, 15, 16, 17, 18, 19, 20" in diag["warning"]
    text = "\n".join(spread_lines(space, diag))
    assert "L20 0.0000*" in text and "L1 -" in text and text.endswith(diag["warning"])
    # a layer a little under 5% of the largest spread is flat, a little over is not
    m = _matrix(space, 21)
    top = max(v for v in layer_spreads(space, m) if v is not None)
    m[3, :space.num_ops] = 1.0
    m[3, 0] = 1.0 + 0.049 * top
    m[4, :space.num_ops] = 1.0
    m[4, 0] = 1.0 + 0.051 * top
    diag = diagnose(space, m)
    assert 3 in diag["flat_layers"] and 4 not in diag["flat_layers"]


def test_a_trained_looking_matrix_gives_no_warning():
    space = get_space(CFG)
    diag = diagnose(space, _matrix(space, 21))
    assert diag["flat_layers"] == [] and diag["warning"] is None


def test_ea_and_eval_warn_about_equal_last_layer_gammas(tmp_path, capsys):
    """End to end: a supernet whose last eight layers' gammas are all equal."""
    from search.eval import main as eval_main
    from utils.search.run import build_parser, run_search
    cfg = tiny_config()
    space = get_space(cfg)
    gammas = [[1.0 + 0.05 * ((i * 7 + op * 3) % 5) if i < 13 else 1.0
               for op in range(space.num_ops)] for i in range(space.num_layers)]
    ck = str(tmp_path / "ck.pth.tar")
    save_supernet(ck, cfg, gammas=gammas)
    log_dir = str(tmp_path / "log")
    run_search(build_parser().parse_args(["--checkpoint", ck, "--log-dir", log_dir,
                                          "--max-epochs", "2", "--population-num", "10"]))
    out = capsys.readouterr().out
    assert "warning: 8 of 17 searchable layers have too small an indicator spread" in out
    diag = read_json(log_dir)["indicator_diagnostics"]
    assert diag["flat_layers"] == list(range(13, 21)) and diag["warning"]
    eval_main(["--log-dir", log_dir, "--plot"])
    out = capsys.readouterr().out
    assert "layers 13, 14, 15, 16, 17, 18, 19, 20" in out and "L20 0.0000*" in out
