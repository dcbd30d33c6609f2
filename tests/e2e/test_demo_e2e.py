"""End to end: the demo pipeline with tiny settings, and what each stage hands the next."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import torch

import pytest

from tests.conftest import ROOT, run_env
from utils.flops.table import load_table
from utils.spaces import SpaceConfig, get_space

pytestmark = pytest.mark.slow  # the whole demo pipeline, several processes


def _demo(out: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_demo.py"), "--quick",
                           "--out", out], capture_output=True, text=True, env=run_env(),
                          timeout=600)


def _demo_config() -> dict:
    spec = importlib.util.spec_from_file_location("run_demo", os.path.join(ROOT, "tools", "run_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEMO


def test_demo_pipeline_hands_off_between_stages(tmp_path):
    out = str(tmp_path / "demo")
    r = _demo(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # data -> stage 1: an ImageFolder tree, 10 classes.
    train = os.path.join(out, "data", "train")
    assert len(os.listdir(train)) == 10

    # stage 1 -> stage 2: a BN-only supernet checkpoint of the demo config.
    sup_path = os.path.join(out, "supernet", "checkpoint.pth.tar")
    sup = torch.load(sup_path, map_location="cpu", weights_only=True)
    assert sup["kind"] == "supernet" and sup["train_all"] is False
    cfg = SpaceConfig.from_dict(sup["config"])
    demo = _demo_config()
    assert (cfg.input_size, cfg.width_mult, cfg.stem_stride, cfg.classes) == (
        demo["input_size"], demo["width_mult"], demo["stem_stride"], 10)
    assert sup["iter"] == sup["total_iters"] == 3

    # stage 2 -> stage 3: the search log's winner obeys the limit and matches the table.
    with open(os.path.join(out, "search", "ea_results.json")) as f:
        log = json.load(f)
    space, table = get_space(cfg), load_table(cfg)
    best = space.validate(log["best"]["arch"])
    assert table.flops_of(best) == log["best"]["flops"] <= log["flops_limit"]
    assert log["exact"]["score"] >= log["best"]["score"] - 1e-9
    from utils.search.log import best_arch
    winner, log_cfg = best_arch(os.path.join(out, "search"))
    assert log_cfg == cfg

    # stage 3: the retrained checkpoint is the winner, and --eval reproduced its top-1.
    best_ckpt = torch.load(os.path.join(out, "eval-demo", "best.pth.tar"), map_location="cpu",
                           weights_only=True)
    assert best_ckpt["kind"] == "subnet" and tuple(best_ckpt["arch"]) == tuple(winner)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["arch"] == space.format(winner)
    assert summary["flops"] == table.flops_of(winner) and summary["params"] == table.params_of(winner)
    assert abs(summary["retrained_top1"] - best_ckpt["best_acc_top1"]) < 5e-3
    assert set(summary["seconds"]) == {"data", "supernet", "search", "retrain", "eval"}
    assert "BN-NAS demo report" in r.stdout and "retrained      top-1" in r.stdout

    # A second run reuses every stage's output instead of redoing it.
    mtimes = {p: os.path.getmtime(p) for p in (sup_path, os.path.join(out, "eval-demo",
                                                                        "best.pth.tar"))}
    r2 = _demo(out)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert all(os.path.getmtime(p) == t for p, t in mtimes.items())
    assert "nothing to do" in r2.stdout
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["retrained_top1"] == summary["retrained_top1"]
