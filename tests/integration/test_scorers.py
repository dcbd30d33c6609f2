"""utils/search/scorers.py: the scorer registry, its built-ins, and a plug-in scorer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_env
from tests.search_helpers import (_tables_env, hand_gammas, read_json,  # noqa: F401
                                  save_supernet, search_table_dir, tiny_config)
from utils.checkpoints.io import save_atomic
from utils.cli.common import main_guard
from utils.errors import UserError
from utils.flops.limits import cost_range
from utils.flops.table import load_table
from utils.search import indicator, zero_cost
from utils.search.run import build_parser, run_search
from utils.search.scorers import (SCORERS, Scorer, ScoreContext, check_method, get_scorer,
                                  scorer_class)
from utils.spaces import get_space

EA = os.path.join(ROOT, "search", "ea.py")
EVAL = os.path.join(ROOT, "search", "eval.py")
TOY = os.path.join(ROOT, "docs", "examples", "toy_scorer.py")
BUILT_INS = ["indicator", "accuracy", "flops", "params", "synflow", "naswot", "grad_norm",
             "snip"]
NON_ADDITIVE = ["accuracy", "synflow", "naswot", "grad_norm", "snip"]


@main_guard
def ea_main(argv):
    run_search(build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, search_table_dir):
    """A tiny supernet with hand-set gammas, and a slim copy holding only the indicator
    BNs (quick to load, enough for the indicator and table scorers)."""
    d = tmp_path_factory.mktemp("scorers")
    cfg = tiny_config()
    space = get_space(cfg)
    net = save_supernet(str(d / "full.pth.tar"), cfg, gammas=hand_gammas(space))
    keep = tuple(p + "." for row in space.indicator_param_names() for p in row)
    save_atomic(dict(kind="supernet", config=cfg.to_dict(), train_all=False, iter=0, epoch=0,
                     seed=0, args={}, state_dict={k: v for k, v in net.state_dict().items()
                                                  if k.startswith(keep)}),
                str(d / "slim.pth.tar"))
    return dict(dir=d, cfg=cfg, space=space, full=str(d / "full.pth.tar"),
                slim=str(d / "slim.pth.tar"), state=net.state_dict())


def _archs(space, n=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([space.random_arch(rng) for _ in range(n)], dtype=np.int64)


def test_registry_lists_the_built_ins_and_the_parser_offers_them():
    assert SCORERS.names()[:len(BUILT_INS)] == BUILT_INS
    action = next(a for a in build_parser()._actions if a.dest == "score")
    assert list(action.choices) == SCORERS.names() and action.default == "indicator"
    assert [n for n in BUILT_INS if SCORERS.get(n).additive] == ["indicator", "flops", "params"]
    assert not SCORERS.get("flops").higher_is_better and SCORERS.get("accuracy").higher_is_better
    with pytest.raises(UserError, match="unknown scorer 'nope'"):
        SCORERS.get("nope")
    # A log's score_kind gives its texts back; any other name the neutral ones.
    assert scorer_class("indicator").label == "BN indicator"
    assert scorer_class("accuracy").label == "top-1 %"
    assert scorer_class("unknown") is Scorer and scorer_class(None).label == "score"


def test_indicator_scorer_equals_the_indicator_it_replaced(tiny):
    ctx = ScoreContext.from_checkpoint(tiny["full"])
    scorer = get_scorer("indicator")
    scorer.prepare(ctx)
    m = indicator.indicator_matrix(tiny["space"], tiny["state"])
    archs = _archs(tiny["space"])
    assert np.array_equal(scorer.matrix(), m)
    assert np.array_equal(scorer.score(archs), indicator.score(m, archs))
    assert np.array_equal(scorer.objective(archs), indicator.score(m, archs))
    assert scorer.score(archs[0])[0] == indicator.score(m, archs[0])


def test_flops_and_params_scorers_equal_the_table(tiny):
    ctx = ScoreContext.from_checkpoint(tiny["slim"])
    table = load_table(tiny["cfg"])
    archs = _archs(tiny["space"])
    for name, of in (("flops", table.flops_of), ("params", table.params_of)):
        scorer = get_scorer(name)
        scorer.prepare(ctx)
        assert np.array_equal(scorer.score(archs), of(archs).astype(np.float64)), name
        # Lower is better: the search maximises (and logs) minus the count.
        assert np.array_equal(scorer.objective(archs), -of(archs).astype(np.float64)), name


def test_additive_matrix_sums_to_the_score(tiny):
    ctx = ScoreContext.from_checkpoint(tiny["slim"])
    archs = _archs(tiny["space"], n=200, seed=3)
    rows = np.arange(archs.shape[1])
    for name, cls in SCORERS.items():
        if not cls.additive:
            continue
        scorer = cls()
        scorer.prepare(ctx)
        m = scorer.matrix()
        assert m.shape == (tiny["space"].num_layers, tiny["space"].num_ops + 1), name
        summed = scorer.offset() + m[rows, archs].sum(axis=1)
        assert np.allclose(summed, scorer.score(archs), rtol=1e-12, atol=0), name
        sign = 1.0 if scorer.higher_is_better else -1.0  # what the exact search solves
        assert np.allclose(sign * scorer.offset()
                           + scorer.objective_matrix()[rows, archs].sum(axis=1),
                           scorer.objective(archs), rtol=1e-12, atol=0), name


def test_zero_cost_scorers_equal_the_proxies_on_the_studys_batch(tiny, tiny_data):
    """Each proxy scorer gives zero_cost's proxy of the standalone subnet at the seeded
    initialisation, on the batch the ranking study picks (utils/study/ranking.py)."""
    from utils.data.folder import SeededImageFolder, scan_image_folder
    from utils.data.loaders import prepare_batch
    args = build_parser().parse_args(["--train_dir", os.path.join(tiny_data, "train"),
                                      "--proxy-batch", "6", "--seed", "2", "--device", "cpu"])
    ctx = ScoreContext.from_checkpoint(tiny["slim"], args)
    index = scan_image_folder(args.train_dir)
    pick = np.random.default_rng([2, 7]).choice(len(index.samples), size=6, replace=False)
    ds = SeededImageFolder([index.samples[i] for i in pick], 32, train=False)
    x, y = prepare_batch((torch.stack([ds[i][0] for i in range(6)]),
                          torch.tensor([ds[i][1] for i in range(6)])), torch.device("cpu"))
    archs = _archs(tiny["space"], n=2, seed=5)
    for name in ("synflow", "naswot", "grad_norm", "snip"):
        scorer = get_scorer(name)
        scorer.prepare(ctx)
        want = []
        for arch in archs:
            torch.manual_seed(2)
            want.append(zero_cost.PROXIES[name](
                tiny["space"].subnet(tuple(int(a) for a in arch), dropout=0.0), x, y))
        assert scorer.score(archs).tolist() == pytest.approx(want, rel=1e-9), name


def test_accuracy_scorer_equals_spos_scoring(tmp_path, tiny_data, search_table_dir):
    from utils.search.spos import SposScorer
    cfg = tiny_config()
    ck = str(tmp_path / "spos.pth.tar")
    net = save_supernet(ck, cfg, train_all=True, seed=5)
    flags = ["--train_dir", os.path.join(tiny_data, "train"), "--test_dir",
             os.path.join(tiny_data, "val"), "--bn-batches", "1", "--batch-size", "8",
             "--val-images", "8", "--device", "cpu", "--workers", "0"]
    scorer = get_scorer("accuracy")
    scorer.prepare(ScoreContext.from_checkpoint(ck, build_parser().parse_args(flags)))
    spos = SposScorer(get_space(cfg), net.state_dict(), os.path.join(tiny_data, "train"),
                      os.path.join(tiny_data, "val"), bn_batches=1, batch_size=8,
                      val_images=8, device="cpu", seed=0, workers=0, log=lambda m: None)
    archs = _archs(get_space(cfg), n=2, seed=1)
    assert scorer.score(archs).tolist() == spos(archs).tolist()
    assert scorer.reference_keys(62.5) == {"err": 37.5, "acc": 62.5}


def test_exact_method_refuses_a_non_additive_scorer_in_one_line(tiny, capsys):
    for name in NON_ADDITIVE:
        with pytest.raises(UserError) as e:
            check_method(name, "exact")
        assert "\n" not in str(e.value) and f"--score {name}" in str(e.value)
        check_method(name, "ea")
    check_method("flops", "exact")
    with pytest.raises(SystemExit) as e:
        ea_main(["--checkpoint", tiny["slim"], "--method", "exact", "--score", "synflow",
                 "--log-dir", str(tiny["dir"] / "refused")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --method exact needs a score that is a sum over layers")
    assert not os.path.exists(tiny["dir"] / "refused")


def test_flops_scorer_search_finds_the_cheapest(tiny, capsys):
    log_dir = str(tiny["dir"] / "flops")
    ea_main(["--checkpoint", tiny["slim"], "--score", "flops", "--log-dir", log_dir,
             "--max-epochs", "2", "--population-num", "10"])
    capsys.readouterr()
    res = read_json(log_dir)
    table = load_table(tiny["cfg"])
    assert res["score_kind"] == "flops" and res["method"] == "both"
    # The proven optimum of "fewest FLOPs" is the space's cheapest architecture.
    assert res["exact"]["flops"] == cost_range(tiny["space"], table)[0]
    assert res["exact"]["score"] == -res["exact"]["flops"] >= res["best"]["score"]
    assert all(c["score"] == -c["flops"] for c in res["candidates"])


def _toy_rms(space, state, arch) -> float:
    names = space.indicator_param_names()
    return sum(float(state[names[i][op] + ".weight"].double().pow(2).mean().sqrt())
               for i, op in enumerate(arch) if op != -1)


def test_plugin_scorer_end_to_end(tiny, tmp_path):
    """docs/examples/toy_scorer.py, copied outside the repository, is loaded by --plugin,
    searched with by search/ea.py, recorded in the log, and read back by eval.py."""
    plugin = str(tmp_path / "elsewhere" / "my_toy.py")
    os.makedirs(os.path.dirname(plugin))
    shutil.copy(TOY, plugin)
    env = run_env()
    env["BNNAS_TABLE_DIR"] = os.environ["BNNAS_TABLE_DIR"]
    log_dir = str(tmp_path / "log")
    common = ["--checkpoint", tiny["slim"], "--max-epochs", "2", "--population-num", "10",
              "--select-num", "3", "--mutation-num", "4", "--crossover-num", "4"]
    # Without the plug-in, "toy" is no choice: one line, exit 2.
    p = subprocess.run([sys.executable, EA, *common, "--score", "toy", "--log-dir", log_dir],
                       env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "invalid choice: 'toy'" in p.stderr and not os.path.exists(log_dir)
    p = subprocess.run([sys.executable, EA, "--plugin", plugin, *common, "--score", "toy",
                        "--log-dir", log_dir], env=env, capture_output=True, text=True,
                       cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "top 10 of" in p.stdout and "(RMS gamma (toy example), higher is better)" in p.stdout
    res = read_json(log_dir)
    assert res["score_kind"] == "toy" and res["method"] == "both" and res["exact"]
    space, state = tiny["space"], tiny["state"]
    for c in res["candidates"] + [res["exact"]]:
        assert c["score"] == pytest.approx(_toy_rms(space, state, c["arch"]), rel=1e-12)
    assert res["exact"]["score"] >= res["best"]["score"] - 1e-12
    # eval.py names the score with the plug-in's label.
    p = subprocess.run([sys.executable, EVAL, "--plugin", plugin, "--log-dir", log_dir,
                        "--topk", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].endswith("candidates (RMS gamma; source json)")
    # The written settings rerun the search (the plug-in comes back from the file): it is
    # finished, so it is reported.
    p = subprocess.run([sys.executable, EA, "--config", os.path.join(log_dir, "config.yaml")],
                       env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr
    assert "already holds this finished search" in p.stdout
    assert json.loads(open(os.path.join(log_dir, "ea_results.json")).read()) == res
