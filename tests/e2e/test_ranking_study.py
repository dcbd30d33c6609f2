"""The ranking study: its statistics (exact values), its architecture sampler, and the
quick study end to end (structure of ranking.json, correlations in [-1, 1], resume,
reuse of the stages whose settings did not change)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import run_env, write_imagefolder
from utils.spaces.sampling import stratified_by_flops
from utils.cli.common import UserError
from utils.flops.table import load_table
from utils.study.stats import (average_ranks, bootstrap_indices, correlate, interval,
                           kendall_tau, paired_difference, spearman_rho)
from utils.study.ranking import (RunOptions, StudySettings, StudyStopped, budget_key,
                                 Timing, choose_budget, conclude, rank_statistics, run_stage,
                                 seed_agreement, spos_scores_key, stop_all, supernet_key)
from utils.flops.limits import cost_range, default_flops_limit
from utils.spaces import get_space, make_config

pytestmark = pytest.mark.slow  # the study in quick mode: minutes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _private_tables(tmp_path_factory, monkeypatch):
    # FLOPs tables built for the test configs go to a temporary cache, not ~/.cache.
    monkeypatch.setenv("BNNAS_TABLE_DIR", str(tmp_path_factory.getbasetemp() / "flops_tables"))


# ---- statistics ------------------------------------------------------------------------

def test_kendall_tau_b_with_ties_matches_hand_count():
    # 10 pairs; y ties once (7, 7); concordant 8, discordant 1 (8 > 7 at positions 3, 4).
    assert kendall_tau([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(7 / math.sqrt(10 * 9),
                                                                          abs=1e-15)
    # Ties on both sides (the value of the usual tau-b definition, e.g. scipy's).
    assert kendall_tau([3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]) == pytest.approx(
        0.16051447078102563, abs=1e-14)


def test_spearman_rho_uses_average_ranks():
    assert average_ranks([3, 1, 4, 1, 5]).tolist() == [3.0, 1.5, 4.0, 1.5, 5.0]
    # ranks x = 1..5, y = 1, 2, 3.5, 5, 3.5: cov 8, var 10 and 9.5.
    assert spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95),
                                                                           abs=1e-15)
    assert spearman_rho([3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]) == pytest.approx(
        0.19885368120992467, abs=1e-14)


def test_correlations_are_rank_invariant_and_bounded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=25)
    y = x + rng.normal(scale=0.5, size=25)
    for f in (kendall_tau, spearman_rho):
        assert f(x, x) == 1.0 and f(x, -x) == -1.0
        assert f(np.exp(x), y ** 3) == pytest.approx(f(x, y ** 3), abs=1e-15)
        assert -1.0 <= f(x, y) <= 1.0
        assert math.isnan(f(x, np.full(25, 3.0)))  # constant: undefined, not 0


def test_batched_rows_equal_single_calls():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(7, 12)).astype(float)  # many ties
    y = rng.normal(size=(7, 12))
    for f in (kendall_tau, spearman_rho):
        batch = f(x, y)
        assert batch.shape == (7,)
        np.testing.assert_allclose(batch, [f(a, b) for a, b in zip(x, y)], rtol=0, atol=1e-14)


def test_bootstrap_interval_and_paired_difference():
    truth = np.arange(20, dtype=float)
    idx = bootstrap_indices(20, 500, seed=3)
    assert idx.shape == (500, 20) and idx.min() >= 0 and idx.max() < 20
    np.testing.assert_array_equal(idx, bootstrap_indices(20, 500, seed=3))
    exact = correlate(truth * 2 + 1, truth, idx)
    assert exact["tau"] == 1.0 and exact["tau_ci"] == [1.0, 1.0] and exact["rho_ci"] == [1.0, 1.0]
    rng = np.random.default_rng(0)
    noisy = correlate(truth + rng.normal(scale=4.0, size=20), truth, idx)
    lo, hi = noisy["tau_ci"]
    assert -1.0 <= lo < noisy["tau"] < hi <= 1.0
    d = paired_difference(exact["tau_boot"], noisy["tau_boot"], exact["tau"], noisy["tau"])
    assert d["diff"] == pytest.approx(1.0 - noisy["tau"])
    assert d["ci"][0] >= 0.0  # the perfect predictor is never worse on the same resample
    assert interval(np.array([np.nan, np.nan])) == [None, None]
    const = correlate(np.ones(20), truth, idx)
    assert const["tau"] is None and const["rho"] is None and const["tau_ci"] == [None, None]


def test_rank_statistics_compares_with_flops_on_the_same_resamples():
    truth = np.array([50.0, 52.0, 51.0, 55.0, 60.0, 58.0])
    preds = {"flops": dict(family="flops", scores=[1, 2, 3, 4, 5, 6]),
             "oracle": dict(family="bn_indicator", epoch=1, scores=truth.tolist())}
    st = rank_statistics(truth, preds, resamples=300, seed=0)
    assert st["oracle"]["tau"] == 1.0
    assert st["flops"]["tau"] == pytest.approx(kendall_tau([1, 2, 3, 4, 5, 6], truth))
    assert "tau_minus_flops" not in st["flops"]
    assert st["oracle"]["tau_minus_flops"]["diff"] == pytest.approx(1.0 - st["flops"]["tau"])


@pytest.mark.parametrize("bad", [([1, 2], [1, 2, 3]), ([1, np.nan], [1, 2])])
def test_bad_inputs_are_refused(bad):
    with pytest.raises(ValueError):
        kendall_tau(*bad)


# ---- architecture sampling -----------------------------------------------------------

DEMO = dict(input_size=32, width_mult=0.5, classes=10, stem_stride=2)


def test_stratified_sampling_spreads_over_the_range_under_the_limit():
    cfg = make_config("mobilenet", **DEMO)
    space, table = get_space(cfg), load_table(cfg)
    limit = default_flops_limit(cfg)[0] * 1e6
    archs = stratified_by_flops(space, table, 30, limit, seed=0)
    assert len(set(archs)) == 30
    for a in archs:
        assert space.validate(a) == a  # fixed skips respected, ops allowed
    flops = table.flops_of(np.array(archs))
    assert (np.diff(flops) >= 0).all() and flops.max() <= limit
    lo = cost_range(space, table)[0]
    # Spread: the picks reach both ends, and no gap exceeds 3 bin widths.
    width = (limit - lo) / 30
    assert flops.min() - lo < 2 * width and limit - flops.max() < 2 * width
    assert np.diff(flops).max() < 3 * width
    assert stratified_by_flops(space, table, 30, limit, seed=0) == archs
    assert stratified_by_flops(space, table, 30, limit, seed=1) != archs


def test_stratified_sampling_refuses_an_impossible_request():
    cfg = make_config("mobilenet", **DEMO)
    space, table = get_space(cfg), load_table(cfg)
    lo = cost_range(space, table)[0]
    with pytest.raises(ValueError, match="distinct architectures|no architecture fits"):
        stratified_by_flops(space, table, 5, lo, seed=0)  # only the cheapest one fits


# ---- the quick study end to end --------------------------------------------------------

def _study(out: str, data: str, *extra: str, report: str | None = None
           ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, os.path.join(ROOT, "tools", "ranking_study.py"), "--quick",
           "--data", data, "--out", out, "--report-dir", report or os.path.join(out, "report"),
           "--threads", "1", "--workers", "0", *extra]
    return subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)


def _check_png(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(path) > 10_000, path


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> str:
    """4 classes told apart by colour: even a few iterations learn something."""
    return write_imagefolder(str(tmp_path_factory.mktemp("study_data")), classes=4,
                             train_per_class=24, val_per_class=10, size=16)


PREDICTORS = {"bn_indicator[indicator]@3", "bn_indicator[indicator]@6", "bn_indicator[all]@3",
              "bn_indicator[all]@6", "bn_indicator[spos supernet]@6", "spos_accuracy@3",
              "spos_accuracy@6", "synflow", "naswot", "grad_norm", "snip", "flops", "params",
              "random"}


def test_quick_study_runs_resumes_on_a_fresh_machine_and_reports(tmp_path, learnable):
    out, report = str(tmp_path / "work"), str(tmp_path / "report")
    r = _study(out, learnable, report=report)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    with open(os.path.join(report, "ranking.json")) as f:
        rep = json.load(f)
    assert rep["version"] == 2 and rep["settings"]["width_mult"] == 0.25
    # held-out split: 4 of each class's 24 training images are held out for SPOS scoring
    assert rep["data"] == dict(source="given", train_images=80, holdout_images=16,
                               val_images=40, classes=4)
    subs = rep["subnets"]
    assert len(subs) == 6 and len({tuple(x["arch"]) for x in subs}) == 6
    under = [x for x in subs if x["stratum"] == "under_limit"]
    assert len(under) == 3 and all(x["flops"] <= rep["flops_limit"] for x in under)
    assert all(x["flops"] > rep["flops_limit"] for x in subs if x not in under)
    assert sum(x["pilot"] for x in subs) == 3
    # two seeds each, the mean is the ground truth
    for x in subs:
        assert len(x["top1_per_seed"]) == 2
        assert x["top1"] == pytest.approx(sum(x["top1_per_seed"]) / 2)
    pilot = rep["pilot"]
    assert [b["iters"] for b in pilot["budgets"]] == [6, 10]
    assert pilot["chosen_iters"] in (6, 10) and rep["ground_truth"]["iters"] == pilot["chosen_iters"]
    assert all(b["subnets"] == 3 and b["seconds_per_training"] > 0 for b in pilot["budgets"])
    assert set(rep["predictor_scores"]) == PREDICTORS
    for name, p in rep["predictor_scores"].items():
        assert len(p["scores"]) == 6 and p["seconds_per_candidate"] >= 0, name
        assert all(math.isfinite(v) for v in p["scores"]), name
    assert set(rep["strata"]) == {"all", "under_limit"}
    assert rep["strata"]["all"]["subnets"] == 6 and rep["strata"]["under_limit"]["subnets"] == 3
    for st in rep["strata"].values():
        assert set(st["predictors"]) == PREDICTORS
        for name, p in st["predictors"].items():
            for stat in ("tau", "rho"):
                if p[stat] is not None:
                    assert -1.0 <= p[stat] <= 1.0, (name, stat)
    # the stratum statistics are over the stratum's subnets only
    idx = [k for k, x in enumerate(subs) if x["stratum"] == "under_limit"]
    f = rep["predictor_scores"]["flops"]["scores"]
    truth = [x["top1"] for x in subs]
    expected = kendall_tau([f[k] for k in idx], [truth[k] for k in idx])
    got = rep["strata"]["under_limit"]["predictors"]["flops"]["tau"]
    assert (got is None and math.isnan(expected)) or got == pytest.approx(expected)
    for name in ("bn-indicator", "bn-all", "spos"):
        sv = rep["supernets"][name]
        assert sv["snapshots"] == [3, 6] and math.isfinite(sv["final_loss"])
        assert sv["chance_loss"] == pytest.approx(math.log(4)) and sv["curve"]
    assert rep["conclusion"]["rule"] and set(rep["conclusion"]["strata"]) == set(rep["strata"])
    assert rep["not_used"] == dict(trainings=[], supernets=[])  # every result on record used
    assert all(c["verdict"] for c in rep["conclusion"]["strata"].values())
    for name in rep["plots"]:
        _check_png(os.path.join(report, name))
    # The committed part is small JSON (and plots), never a checkpoint.
    files = [os.path.join(d, n) for d, _, ns in os.walk(report) for n in ns]
    assert files and all(n.endswith((".json", ".png")) for n in files)
    truth_files = [n for n in files if os.sep + "truth" + os.sep in n]
    # pilot: 3 subnets x 2 seeds x 2 budgets; then all 6 x 2 at the chosen one (3 x 2 reused)
    assert len(truth_files) == 12 + 12 - 6

    # A fresh machine: only the report folder survives. Nothing is trained again.
    shutil.rmtree(out)
    again = _study(out, learnable, report=report)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    for word in ("subnet ", "supernet BN-only", "supernet SPOS", "SPOS scoring"):
        assert word not in again.stdout, word
    with open(os.path.join(report, "ranking.json")) as f:
        rep2 = json.load(f)
    assert rep2["subnets"] == rep["subnets"] and rep2["strata"] == rep["strata"]
    assert rep2["predictor_scores"].keys() == rep["predictor_scores"].keys()
    assert all(sv["finished"] for sv in rep2["supernets"].values())

    # --report-now trains nothing: BN-only runs planned to 9 iterations that have reached
    # (on record) their snapshots at 3 and 6 are reported there, marked unfinished.
    longer = dataclasses.replace(StudySettings(**rep["settings"]), bn_snapshots="3,6,9")
    data_id = dict(id=dict(root=os.path.abspath(learnable),
                           holdout_per_class=rep["settings"]["holdout_per_class"]))
    for mode, name in (("indicator", "bn-indicator"), ("all", "bn-all")):
        old = os.path.join(report, "supernets",
                           f"{name}-{supernet_key(StudySettings(**rep['settings']), data_id, rep['config'], mode)}")
        new = os.path.join(report, "supernets",
                           f"{name}-{supernet_key(longer, data_id, rep['config'], mode)}")
        assert os.path.isdir(old) and not os.path.exists(new)
        os.makedirs(new)
        for it in (3, 6):
            shutil.copy(os.path.join(old, f"iter_{it:06d}.json"), new)
    now = _study(out, learnable, "--bn-snapshots", "3,6,9", "--report-now", report=report)
    assert now.returncode == 0, now.stdout[-3000:] + now.stderr[-2000:]
    for word in ("subnet ", "supernet BN-only", "supernet SPOS", "SPOS scoring"):
        assert word not in now.stdout, word
    assert "supernet bn-all: unfinished, reported at 2 of 3 snapshots" in now.stdout
    with open(os.path.join(report, "ranking.json")) as f:
        rep3 = json.load(f)
    for name in ("bn-indicator", "bn-all"):
        sv = rep3["supernets"][name]
        assert (sv["finished"], sv["snapshots"], sv["planned_snapshots"], sv["trained_iters"]) \
            == (False, [3, 6], [3, 6, 9], 6)
    assert rep3["supernets"]["spos"]["finished"] is True
    assert set(rep3["predictor_scores"]) == PREDICTORS
    assert rep3["predictor_scores"]["bn_indicator[all]@6"]["scores"] == \
        rep["predictor_scores"]["bn_indicator[all]@6"]["scores"]
    assert rep3["subnets"] == rep["subnets"]
    # ... and refuses, in one line, when the ground truth is not on record
    missing = _study(out, learnable, "--subnet-iters", "7", "--report-now", report=report)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: --report-now: training ")
    assert "is not on record; the ground truth and the pilot must be complete" in missing.stderr


def test_stage_keys_depend_on_exactly_their_settings():
    base = StudySettings()
    data, config = dict(id=dict(source="slice")), dict(space="mobilenet")

    def keys(st):
        return dict(truth=budget_key(st, data, config, 100),
                    bn=supernet_key(st, data, config, "indicator"),
                    ablation=supernet_key(st, data, config, "all"),
                    spos=supernet_key(st, data, config, "spos"),
                    spos_scores=spos_scores_key(st, data, config))

    k = keys(base)
    assert len(set(k.values())) == 5
    changed = {
        "subnet_lr": {"truth"},
        "subnet_batch": {"truth"},
        "subnet_dropout": {"truth"},
        "bn_lr": {"bn", "ablation"},
        "spos_lr": {"spos", "spos_scores"},
        "supernet_batch": {"bn", "ablation", "spos", "spos_scores"},
        "truth_seeds": set(),  # more seeds add runs; the first seeds' runs stay valid
        "pilot_budgets": set(),
        "spos_val_images": {"spos_scores"},
        "spos_bn_batches": {"spos_scores"},
        "min_scale": {"truth", "bn", "ablation", "spos", "spos_scores"},
        "lighting": {"truth", "bn", "ablation", "spos", "spos_scores"},
        "seed": {"bn", "ablation", "spos", "spos_scores"},  # subnets: seeds are per run
    }
    for field, expect in changed.items():
        old = getattr(base, field)
        new = "100,200" if isinstance(old, str) else (old * 2 if old else 1)
        k2 = keys(dataclasses.replace(base, **{field: new}))
        assert {name for name in k if k[name] != k2[name]} == expect, field
    # a longer BN-only run is another run; more snapshots of the same run are not
    assert keys(dataclasses.replace(base, bn_snapshots="10,24000"))["bn"] == k["bn"]
    assert keys(dataclasses.replace(base, bn_snapshots="10,30000"))["bn"] != k["bn"]
    other = dict(id=dict(source="debian"))
    assert budget_key(base, other, config, 100) != k["truth"]
    assert keys(base) == k  # deterministic


def test_bad_requests_fail_fast_in_one_line(tmp_path, learnable):
    r = _study(str(tmp_path / "s1"), learnable, "--flops-limit", "0.01")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: no architecture fits the FLOPs limit 0.01M")
    assert not os.path.exists(tmp_path / "s1" / "report" / "truth")  # nothing trained
    r = _study(str(tmp_path / "s2"), learnable, "--subnets-under", "1", "--subnets-over", "1")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --subnets-under plus --subnets-over must be >= 3 for a rank correlation")


@pytest.mark.parametrize("field,value,message", [
    ("min_scale", 0.0, "--min-scale must be in (0, 1], got 0.0"),
    ("min_scale", 1.5, "--min-scale must be in (0, 1], got 1.5"),
    ("lighting", -0.1, "--lighting must be >= 0, got -0.1"),
    ("subnet_dropout", 1.0, "--subnet-dropout must be in [0, 1), got 1.0"),
    ("truth_seeds", 0, "--truth-seeds must be >= 1, got 0"),
    ("pilot_budgets", "10,x", "--pilot-budgets must be a comma-separated list of integers, "
                              "got '10,x'"),
    ("bn_snapshots", "0,5", "--bn-snapshots needs positive integers, got '0,5'"),
    ("ablations", "all,everything", "--ablations: unknown variant 'everything' (known: "
                                    "indicator, all, indicator+classifier, all+classifier)"),
    ("tau_target", 2.0, "--tau-target must be in [-1, 1], got 2.0"),
])
def test_settings_name_the_bad_value(field, value, message):
    with pytest.raises(UserError) as e:
        dataclasses.replace(StudySettings(), **{field: value}).check()
    assert str(e.value) == message
    StudySettings().check()  # the defaults pass


def test_stopping_the_study_lets_each_stage_save(tmp_path):
    """stop_all sends one SIGTERM to every running stage, which saves; the stage's runner
    then reports the stop instead of a failure."""
    marker = tmp_path / "saved"
    child = ("import signal, sys, time\n"
             "def save(*_):\n"
             f"    open({str(marker)!r}, 'w').write('ok'); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, save)\n"
             f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
             "time.sleep(60)\n")
    opts = RunOptions(out=str(tmp_path), report_dir=str(tmp_path))
    timing = Timing(str(tmp_path / "timing.json"))
    result = {}

    def runner():
        try:
            run_stage("toy", [sys.executable, "-c", child], str(tmp_path),
                      str(tmp_path / "toy.log"), opts, timing, "stage-toy")
        except StudyStopped:
            result["stopped"] = True

    t = threading.Thread(target=runner)
    t.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_all(wait=30)
    t.join(30)
    assert result == {"stopped": True} and marker.read_text() == "ok"
    # the stopped stage's seconds are in the study's account, on disk
    with open(tmp_path / "timing.json") as f:
        assert set(json.load(f)) == {"stage-toy"} and timing.data["stage-toy"] > 0
    with pytest.raises(StudyStopped):  # nothing new starts once stopped
        run_stage("late", [sys.executable, "-c", "pass"], str(tmp_path),
                  str(tmp_path / "late.log"), opts)


def test_seed_agreement_and_budget_choice():
    a, b = [40.0, 42.0, 45.0, 41.0, 39.0], [41.0, 44.0, 43.0, 40.0, 38.0]
    ag = seed_agreement(np.array([a, b]).T, resamples=100, seed=0)
    assert ag["tau"] == pytest.approx(kendall_tau(a, b)) and ag["tau"] == pytest.approx(0.6)
    assert ag["rho"] == pytest.approx(spearman_rho(a, b))
    assert ag["mean_abs_diff"] == pytest.approx((1 + 2 + 2 + 1 + 1) / 5)
    assert seed_agreement(np.array([a]).T, 100, 0) is None  # one seed: nothing to compare

    def budget(iters, tau):
        return dict(iters=iters, agreement=None if tau is None else dict(tau=tau))

    assert choose_budget([budget(100, 0.3), budget(300, 0.65), budget(900, 0.8)], 0.6)[0] == 300
    it, why = choose_budget([budget(100, 0.3), budget(300, None), budget(900, 0.5)], 0.6)
    assert it == 900 and "no pilot budget reached" in why

    def costed(iters, tau, seconds):  # 20 pilot trainings done at each budget
        return dict(budget(iters, tau), seconds_per_training=seconds, trainings=20)

    pilot = [costed(250, 0.27, 300), costed(750, 0.07, 600), costed(2000, 0.40, 1500)]
    # 60 trainings, 40 left: 2000 costs 40 * 1500 s = 16.7 h, 750 6.7 h, 250 3.3 h
    it, why = choose_budget(pilot, 0.6, trainings=60, hours=20)
    assert it == 2000 and "most repeatable" in why
    it, why = choose_budget(pilot, 0.6, trainings=60, hours=10)
    assert it == 250 and "most repeatable" in why  # 750 fits too, but repeats less
    it, why = choose_budget(pilot, 0.6, trainings=60, hours=1)
    assert it == 250 and "none fits" in why
    # reaching the target still wins, whatever it costs
    assert choose_budget(pilot + [costed(4000, 0.7, 9000)], 0.6, trainings=60, hours=1)[0] == 4000


def _stats(**taus) -> dict:
    return {name: dict(tau=t, tau_ci=list(ci)) for name, (t, ci) in taus.items()}


def test_conclusion_follows_the_rule():
    bn = "bn_indicator[indicator]@100"
    works = _stats(**{bn: (0.5, (0.2, 0.7)), "flops": (0.3, (0.0, 0.5)),
                      "params": (0.4, (0.1, 0.6))})
    assert conclude(works, bn, [])["verdict"] == "works"
    below_baseline = _stats(**{bn: (0.35, (0.1, 0.6)), "flops": (0.4, (0.1, 0.6)),
                               "params": (0.1, (-0.2, 0.4))})
    assert conclude(below_baseline, bn, [])["verdict"] == "open"  # CI includes 0.4
    beaten = _stats(**{bn: (-0.1, (-0.4, 0.2)), "flops": (0.5, (0.2, 0.7)),
                       "params": (0.45, (0.2, 0.7))})
    c = conclude(beaten, bn, [])
    assert c["verdict"] == "does not beat the simple baselines" and "+0.50" in c["why"]
    spanning = _stats(**{bn: (0.1, (-0.2, 0.4)), "flops": (0.05, (-0.2, 0.3)),
                         "params": (0.0, (-0.3, 0.3))})
    assert conclude(spanning, bn, [])["verdict"] == "open"
    c = conclude(works, bn, ["the ground truth's seed-to-seed tau is +0.40 (< 0.6)"])
    assert c["verdict"] == "works (inconclusive)" and "+0.40" in c["why"]
