"""The ranking study: its statistics (exact values), its architecture sampler, and the
quick study end to end (structure of ranking.json, correlations in [-1, 1], resume,
reuse of the stages whose settings did not change)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_env
from utils.arch_sampling import stratified_by_flops
from utils.cli import UserError
from utils.flops import load_table
from utils.ranking import (average_ranks, bootstrap_indices, correlate, interval,
                           kendall_tau, paired_difference, spearman_rho)
from utils.ranking_study import (StudySettings, noisy_truth_warning, rank_statistics, stage_keys,
                                 stop_gracefully, truth_reliability)
from utils.search_limits import cost_range, default_flops_limit
from utils.spaces import get_space, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    assert st["oracle"]["epoch"] == 1 and st["oracle"]["scores"] == truth.tolist()


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

def _study(out: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, os.path.join(ROOT, "tools", "ranking_study.py"), "--quick",
           "--source", "slice", "--out", out, "--threads", "1", "--workers", "0", *extra]
    return subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)


def _check_png(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(path) > 10_000, path


def test_quick_study_runs_resumes_and_reports(tmp_path):
    out = str(tmp_path / "study")
    r = _study(out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with open(os.path.join(out, "report", "ranking.json")) as f:
        rep = json.load(f)

    s = rep["settings"]
    assert (s["bn_epochs"], s["spos_epochs"], s["subnets"], s["width_mult"]) == (2, 2, 4, 0.25)
    assert rep["config"]["input_size"] == 32 and rep["data"]["source"] == "slice"
    assert rep["data"]["train_images"] == 100 and rep["data"]["classes"] == 10
    subs = rep["subnets"]
    assert len(subs) == 4 and len({tuple(x["arch"]) for x in subs}) == 4
    assert all(x["flops"] <= rep["flops_limit"] for x in subs)
    assert [x["flops"] for x in subs] == sorted(x["flops"] for x in subs)
    assert all(0.0 <= x["top1"] <= 100.0 and x["iters"] == 30 for x in subs)

    expected = {"bn_indicator@1", "bn_indicator@2", "bn_indicator_spos_supernet@2",
                "spos_accuracy@1", "spos_accuracy@2", "flops", "params", "random"}
    assert set(rep["predictors"]) == expected
    for name, p in rep["predictors"].items():
        assert len(p["scores"]) == 4
        for stat in ("tau", "rho"):
            assert p[stat] is not None and -1.0 <= p[stat] <= 1.0, (name, stat, p[stat])
            lo, hi = p[f"{stat}_ci"]
            assert -1.0 <= lo <= hi <= 1.0, (name, stat, lo, hi)
        if name != "flops":
            assert "tau_minus_flops" in p
    # FLOPs and params scores are the lookup table's, in the subnets' order.
    assert rep["predictors"]["flops"]["scores"] == [x["flops"] for x in subs]
    assert [c["epoch"] for c in rep["curves"]["bn_indicator"]] == [1, 2]
    assert [c["epoch"] for c in rep["curves"]["spos_accuracy"]] == [1, 2]
    assert rep["bootstrap"]["resamples"] == 200
    # Each supernet's per-epoch training loss/top-1 comes from its own metrics log.
    for mode in ("bn", "spos"):
        curve = rep["supernet_training"][mode]
        assert [c["epoch"] for c in curve] == [1, 2], mode
        assert all(math.isfinite(c["train_loss"]) and 0.0 <= c["train_top1"] <= 100.0
                   for c in curve)
    # The quick mode trains one seed: no seed-to-seed reliability to report.
    assert rep["ground_truth"]["seeds"] == [0] and rep["ground_truth"]["reliability"] is None
    assert rep["ground_truth"]["warning"] is None
    assert all(len(x["top1_per_seed"]) == 1 and x["top1_per_seed"][0] == x["top1"]
               for x in subs)
    for name in rep["plots"]:
        _check_png(os.path.join(out, "report", name))
    bn_dir = os.path.join(out, rep["folders"]["supernet_bn"])
    snaps = sorted(n for n in os.listdir(bn_dir) if n.startswith("epoch_"))
    assert snaps == ["epoch_001.pth.tar", "epoch_002.pth.tar"]

    # Rerunning reuses every supernet epoch, subnet and SPOS score: same numbers, no training.
    again = _study(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "epoch 1/2" not in again.stdout and "subnet 1/4" not in again.stdout
    assert "SPOS scoring" not in again.stdout
    with open(os.path.join(out, "report", "ranking.json")) as f:
        rep2 = json.load(f)
    assert rep2["predictors"] == rep["predictors"] and rep2["subnets"] == rep["subnets"]

    # Other SPOS-scoring settings: only the SPOS scores are recomputed (stage folders are
    # keyed by what they depend on), supernets and subnets are reused.
    other = _study(out, "--spos-val-images", "50")
    assert other.returncode == 0, other.stderr[-2000:]
    assert "SPOS scoring" in other.stdout and "subnet 1/4" not in other.stdout
    assert "epoch 1/2" not in other.stdout
    with open(os.path.join(out, "report", "ranking.json")) as f:
        rep3 = json.load(f)
    assert rep3["subnets"] == rep["subnets"]
    assert rep3["predictors"]["bn_indicator@2"] == rep["predictors"]["bn_indicator@2"]
    assert rep3["folders"]["subnets"] == rep["folders"]["subnets"]
    assert rep3["folders"]["spos_scores"] != rep["folders"]["spos_scores"]


def test_stage_keys_depend_on_exactly_their_settings():
    base = StudySettings()
    data_id, config = dict(source="slice"), dict(space="mobilenet")
    k = stage_keys(base, data_id, config)
    assert set(k) == {"supernet_bn", "supernet_spos", "subnets", "spos_scores"}
    assert k["subnets"].startswith("subnets-") and len(set(k.values())) == 4
    changed = {
        "subnet_lr": {"subnets", "spos_scores"},
        "bn_lr": {"supernet_bn"},
        "spos_lr": {"supernet_spos", "spos_scores"},
        "supernet_batch": {"supernet_bn", "supernet_spos", "spos_scores"},
        "truth_seeds": set(),  # more seeds add runs; the seed-0 runs stay valid
        "bn_epochs": {"supernet_bn"},
        "subnet_dropout": {"subnets", "spos_scores"},
        "min_scale": {"supernet_bn", "supernet_spos", "subnets", "spos_scores"},
        "lighting": {"supernet_bn", "supernet_spos", "subnets", "spos_scores"},
        "spos_val_images": {"spos_scores"},
        "seed": {"supernet_bn", "supernet_spos", "subnets", "spos_scores"},
    }
    for field, expect in changed.items():
        old = getattr(base, field)
        other = dataclasses.replace(base, **{field: old * 2 if old else 1})
        k2 = stage_keys(other, data_id, config)
        assert {name for name in k if k[name] != k2[name]} == expect, field
    k3 = stage_keys(base, dict(source="debian"), config)
    assert all(k3[name] != k[name] for name in k)  # other data: nothing is reused
    assert stage_keys(base, data_id, config) == k  # deterministic


def test_bad_requests_fail_fast_in_one_line(tmp_path):
    r = _study(str(tmp_path / "s1"), "--flops-limit", "0.1")  # below the cheapest architecture
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: no architecture fits the FLOPs limit 0.10M")
    # Failed before training anything.
    assert not [n for n in os.listdir(tmp_path / "s1") if n.startswith("supernet_")]
    r = _study(str(tmp_path / "s2"), "--subnets", "2")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --subnets must be >= 3 for a rank correlation, got 2")


@pytest.mark.parametrize("field,value,message", [
    ("min_scale", 0.0, "--min-scale must be in (0, 1], got 0.0"),
    ("min_scale", 1.5, "--min-scale must be in (0, 1], got 1.5"),
    ("lighting", -0.1, "--lighting must be >= 0, got -0.1"),
    ("subnet_dropout", 1.0, "--subnet-dropout must be in [0, 1), got 1.0"),
    ("truth_seeds", 0, "--truth-seeds must be >= 1, got 0"),
])
def test_settings_name_the_bad_value(field, value, message):
    with pytest.raises(UserError) as e:
        dataclasses.replace(StudySettings(), **{field: value}).check()
    assert str(e.value) == message
    StudySettings().check()  # the defaults pass


def test_an_interrupted_stage_gets_to_save(tmp_path):
    """The study's own interruption must not SIGKILL a stage: it gets a SIGTERM to save on."""
    marker = tmp_path / "saved"
    child = ("import signal, sys, time\n"
             "def save(*_):\n"
             f"    open({str(marker)!r}, 'w').write('ok'); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, save)\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    stop_gracefully(proc, first_wait=0.1)
    assert proc.returncode == 0 and marker.read_text() == "ok"


def test_truth_reliability_is_seed_against_seed():
    a, b = [40.0, 42.0, 45.0, 41.0, 39.0], [41.0, 44.0, 43.0, 40.0, 38.0]
    runs = [dict(top1_per_seed=[x, y]) for x, y in zip(a, b)]
    rel = truth_reliability(runs, resamples=100, seed=0)
    assert rel["tau"] == pytest.approx(kendall_tau(a, b)) and rel["tau"] == pytest.approx(0.6)
    assert rel["rho"] == pytest.approx(spearman_rho(a, b))
    assert rel["mean_abs_diff"] == pytest.approx((1 + 2 + 2 + 1 + 1) / 5)
    assert truth_reliability([dict(top1_per_seed=[x]) for x in a], 100, 0) is None
    # tau 0.6 is reliable enough to read predictors against; 0.2 is not, and says so.
    assert noisy_truth_warning(rel) is None and noisy_truth_warning(None) is None
    warn = noisy_truth_warning(dict(rel, tau=0.2))
    assert "tau +0.20" in warn and "mean |difference| 1.4" in warn and "--subnet-epochs" in warn
