"""Smoke test of bench/retrain_step.py at a tiny size (its output format, not its timings)."""
from __future__ import annotations

import importlib.util
import json
import math
import os


from conftest import ROOT
from utils.flops.table import load_table
from utils.spaces import make_config
from utils.checkpoints.subnet import published_arch


def test_retrain_step_bench_json_and_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BNNAS_TABLE_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("bench_retrain_step",
                                                  os.path.join(ROOT, "bench", "retrain_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--input-size", "32", "--width-mult", "0.25", "--classes", "4", "--stem-stride", "1",
            "--batch", "2", "--steps", "1", "--warmup", "0"]
    assert bench.main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)
    assert out["arch"] == published_arch("mobilenet") and out["config"] == cfg.to_dict()
    assert out["flops"] == load_table(cfg).flops_of([int(a) for a in out["arch"].split()])
    modes = {r["mode"]: (r["amp"], r["channels_last"]) for r in out["results"]}
    assert modes == {"fp32": ("none", False), "fp32+cl": ("none", True),
                     "bf16": ("bf16", False), "bf16+cl": ("bf16", True)}
    for r in out["results"]:
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        assert r["images_per_s"] == r["speedup_vs_fp32"] * out["results"][0]["images_per_s"] \
            or math.isclose(r["speedup_vs_fp32"] * out["results"][0]["images_per_s"],
                            r["images_per_s"])

    table = bench.format_table(out).splitlines()
    assert table[2].split()[:4] == ["mode", "amp", "channels_last", "images/s"]
    assert [line.split()[0] for line in table[3:]] == ["fp32", "fp32+cl", "bf16", "bf16+cl"]
