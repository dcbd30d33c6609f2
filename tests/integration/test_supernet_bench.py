"""Smoke test of bench/supernet_step.py at a tiny size (no timing assertions)."""
from __future__ import annotations

import json
import os
import sys

import torch

from conftest import ROOT


def test_bench_reports_both_modes_and_the_ratio(capsys):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import supernet_step
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    threads = torch.get_num_threads()
    try:
        assert supernet_step.main(["--sizes", "tiny", "--json", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out)
    r = out["results"]["tiny"]
    bn, full = r["bn_only"], r["all_params"]
    assert r["ratio"] == bn["median_ms"] / full["median_ms"]
    # BN-only trains 2 x (indicator channels) values; all-params trains every parameter.
    assert 0 < bn["trainable"] < full["trainable"]
    # Frozen weights need no gradients or momentum: BN-only keeps far less for backward.
    assert bn["grad_mib"] < full["grad_mib"] and bn["optimizer_state_mib"] < full["optimizer_state_mib"]
    assert bn["saved_for_backward_mib"] < full["saved_for_backward_mib"]
    assert out["meta"]["device"] == "cpu"
