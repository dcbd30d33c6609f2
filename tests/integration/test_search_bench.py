"""Smoke test of bench/candidate_scoring.py (tiny settings; no timing assertions)."""
from __future__ import annotations

import importlib.util
import json
import os

from tests.conftest import ROOT
from tests.search_helpers import TINY_ARGS, _tables_env, search_table_dir  # noqa: F401


def test_bench_prints_one_json_object(tiny_data, capsys):
    spec = importlib.util.spec_from_file_location(
        "candidate_scoring", os.path.join(ROOT, "bench", "candidate_scoring.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    capsys.readouterr()
    bench.main(TINY_ARGS + ["--data", tiny_data, "--bn-batches", "1", "--batch-size", "8",
                            "--val-images", "8", "--candidates", "1", "--batch-archs", "1",
                            "50", "--skip-imagenet", "--workers", "0", "--device", "cpu",
                            "--threads", "1", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    ind, spos = r["indicator"], r["spos"]
    assert set(ind["candidates_per_second"]) == {"1", "50"}
    assert spos["bn_batches"] == 1 and spos["val_images"] == 8 and spos["candidates"] == 1
    assert r["ratio"] == spos["seconds_per_candidate"] / ind["seconds_per_candidate"]
    s = r["search"]["this_config"]
    assert s["exact_score"] >= s["ea_best"] - 1e-12 and s["ea_candidates"] > 0
    assert "width=0.25" in r["config"] and "classes=4" in r["config"]
