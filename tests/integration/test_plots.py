"""Plots: search/eval.py --plot on a real search log, the helpers' exact numbers, and the
ranking-study figures. Every PNG must be a valid image of non-trivial size."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_env
from search_helpers import hand_gammas, save_supernet, tiny_config
from search_helpers import search_table_dir  # noqa: F401 - a fixture, used by name
from utils.plots.figures import generation_stats, pareto_front, plot_ranking, plot_search_log
from utils.spaces import get_space

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEARCH_PNGS = ["search_flops_vs_score.png", "search_generations.png",
               "search_indicator_heatmap.png"]


@pytest.fixture(autouse=True)
def _tables_env(search_table_dir, monkeypatch):  # noqa: F811 - the shared fixture
    monkeypatch.setenv("BNNAS_TABLE_DIR", search_table_dir)


def check_png(path: str, min_bytes: int = 15_000) -> tuple[int, int]:
    """A decodable PNG with real content; returns (width, height)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    assert os.path.getsize(path) > min_bytes, (path, os.path.getsize(path))
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        colours = len(set(np.asarray(im.convert("L"))[::4, ::4].ravel().tolist()))
    assert w >= 500 and h >= 400 and colours > 20, (path, w, h, colours)
    return w, h


def test_pareto_front_exact():
    flops = [1, 2, 2, 3, 4, 5]
    score = [0.5, 0.4, 0.7, 0.6, 0.9, 0.9]
    # (1, .5) -> (2, .7) -> (4, .9); (2, .4), (3, .6) and (5, .9) are dominated.
    assert pareto_front(flops, score).tolist() == [0, 2, 4]


def test_generation_stats_exact():
    cands = [dict(score=s, generation=g) for s, g in
             [(1.0, 0), (3.0, 0), (2.0, 1), (2.5, 2), (5.0, 2)]]
    st = generation_stats(cands)
    assert st["generation"].tolist() == [0, 1, 2]
    assert st["mean"].tolist() == [2.0, 2.0, 3.75]
    assert st["best"].tolist() == [3.0, 3.0, 5.0]  # best so far, not best of the generation
    assert st["min"].tolist() == [1.0, 2.0, 2.5]
    assert generation_stats([dict(score=1.0, generation=None)]) is None


def _eval_module():
    spec = importlib.util.spec_from_file_location("bnnas_search_eval",
                                                  os.path.join(ROOT, "search", "eval.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_plot_writes_the_search_plots(tmp_path, capsys):
    cfg = tiny_config()
    ck = str(tmp_path / "supernet.pth.tar")
    save_supernet(ck, cfg, gammas=hand_gammas(get_space(cfg)))
    log_dir = str(tmp_path / "log")
    env = run_env()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "search", "ea.py"), "--checkpoint",
                        ck, "--log-dir", log_dir, "--max-epochs", "4", "--population-num", "20",
                        "--select-num", "5", "--mutation-num", "8", "--crossover-num", "8"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "search", "eval.py"), "--log-dir",
                        log_dir, "--topk", "3", "--plot"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    printed = [ln.split("plot: ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("plot: ")]
    assert sorted(os.path.basename(p) for p in printed) == SEARCH_PNGS
    for p in printed:
        assert os.path.dirname(p) == log_dir
        check_png(p)
    # The table is still printed, and --plot-dir redirects the figures (JSON lists them).
    assert "architecture (--model_id)" in r.stdout
    other = str(tmp_path / "figs")
    _eval_module().main(["--log-dir", log_dir, "--plot", "--plot-dir", other, "--json"])
    listed = json.loads(capsys.readouterr().out)["plots"]
    assert sorted(os.listdir(other)) == SEARCH_PNGS
    assert sorted(listed) == sorted(os.path.join(other, n) for n in SEARCH_PNGS)
    # A --plot-dir that is a file: one-line error, exit 2.
    with pytest.raises(SystemExit) as exc:
        _eval_module().main(["--log-dir", log_dir, "--plot", "--plot-dir", ck])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --plot-dir") and "not a folder" in err
    assert len(err.splitlines()) == 1


def test_reference_style_log_plots_what_it_can(tmp_path):
    """No generations and no indicator (a reference log): two plots skipped with a reason."""
    log = dict(candidates=[dict(arch=[0] * 21, score=-0.3, flops=4.6e8, generation=None),
                           dict(arch=[1] * 21, score=-0.2, flops=4.7e8, generation=None)],
               flops_limit=4.75e8, score_kind="unknown")
    written, notes = plot_search_log(log, str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["search_flops_vs_score.png"]
    check_png(written[0], min_bytes=10_000)
    assert any("generation" in n for n in notes) and any("indicator" in n for n in notes)


def _report(n: int = 12) -> dict:
    """A ranking.json-shaped report (version 2) with made-up numbers."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(40, 60, n)
    flops = np.sort(rng.uniform(2e6, 3e6, n))
    stratum = ["under_limit"] * (n // 2) + ["over_limit"] * (n - n // 2)
    scores = {}
    for it in (250, 1000, 4000):
        scores[f"bn_indicator[indicator]@{it}"] = dict(
            family="bn_indicator[indicator]", iter=it, scores=truth + rng.normal(0, 5, n))
        scores[f"bn_indicator[all]@{it}"] = dict(family="bn_indicator[all]", iter=it,
                                                 scores=rng.normal(size=n))
    for it in (2000, 8000):
        scores[f"spos_accuracy@{it}"] = dict(family="spos_accuracy", iter=it,
                                             scores=rng.uniform(10, 30, n))
    for name in ("synflow", "naswot", "grad_norm", "snip", "random"):
        scores[name] = dict(family=name, scores=rng.uniform(1, 1e6, n))
    scores["flops"] = dict(family="flops", scores=flops)
    scores["params"] = dict(family="params", scores=rng.uniform(5e5, 9e5, n))
    for v in scores.values():
        v["scores"] = [float(x) for x in v["scores"]]
        v["seconds_per_candidate"] = 1e-3

    def stat(tau):
        return dict(tau=tau, tau_ci=[tau - 0.3, min(1.0, tau + 0.3)], rho=tau,
                    rho_ci=[tau - 0.3, min(1.0, tau + 0.3)])

    strata = {}
    for k, name in enumerate(("all", "under_limit")):
        preds = {p: stat(float(rng.uniform(-0.5, 0.8))) for p in scores}
        preds["random"] = dict(tau=None, tau_ci=[None, None], rho=None, rho_ci=[None, None])
        strata[name] = dict(subnets=n if k == 0 else n // 2, predictors=preds,
                            ground_truth_agreement=stat(0.7 - 0.2 * k))
    curves = {st: {fam: [dict(iter=p["iter"], **strata[st]["predictors"][name])
                         for name, p in scores.items() if p["family"] == fam]
                   for fam in ("bn_indicator[indicator]", "bn_indicator[all]", "spos_accuracy")}
              for st in strata}
    subnets = [dict(top1=float(t), flops=float(f), stratum=s)
               for t, f, s in zip(truth, flops, stratum)]
    pilot = dict(target=0.6, chosen_iters=750,
                 budgets=[dict(iters=250, subnets=10, mean_top1=74.0, seconds_per_training=90.0,
                               agreement=stat(0.35)),
                          dict(iters=750, subnets=10, mean_top1=82.0,
                               seconds_per_training=270.0, agreement=stat(0.65))])
    return dict(subnets=subnets, predictor_scores=scores, strata=strata, curves=curves,
                pilot=pilot, ground_truth=dict(iters=750, seeds=[0, 1]))


def test_ranking_plots(tmp_path):
    paths = plot_ranking(_report(), str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        "ranking_scatter.png", "ranking_tau_vs_iterations.png", "ranking_predictors.png",
        "ranking_pilot.png"]
    for p in paths:
        check_png(p)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # atomic writes cleaned up
