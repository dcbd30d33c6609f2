"""The ranking study lists, in its report, every committed result it does not use (a pilot
budget dropped part-way, a stopped supernet), with what those results say."""
from __future__ import annotations

import json
import os

import pytest

from utils.study.ranking import arch_id, runs_on_record
from utils.study.stats import kendall_tau


def _write(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _training(report: str, key: str, arch: list[int], seed: int, top1: float,
              seconds: float, iters: int = 2000) -> None:
    _write(os.path.join(report, "truth", key, f"{arch_id(arch)}-s{seed}.json"),
           dict(arch=arch, seed=seed, iters=iters, top1=top1, train_seconds=seconds))


def test_a_dropped_budget_and_a_stopped_supernet_are_reported(tmp_path):
    report = str(tmp_path)
    archs = [[0, 1], [1, 0], [2, 2], [3, 1]]
    # the used budget: never listed
    _training(report, "used0001", archs[0], 0, 50.0, 1.0, iters=250)
    # the dropped budget: four subnets at seed 0, three of them also at seed 1
    seed0 = [84.0, 83.4, 84.7, 82.9]
    seed1 = [83.0, 83.9, 84.1]
    for a, v in zip(archs, seed0):
        _training(report, "drop0002", a, 0, v, 10.0)
    for a, v in zip(archs, seed1):
        _training(report, "drop0002", a, 1, v, 30.0)
    stopped = dict(status="stopped at iteration 726", why="diverged", curve=[])
    _write(os.path.join(report, "supernets", "bn-x-1234", "stopped.json"), stopped)
    _write(os.path.join(report, "supernets", "bn-x-1234", "iter_000250.json"), {})
    _write(os.path.join(report, "supernets", "bn-y-5678", "iter_000250.json"), {})
    # a stopped supernet that was later finished and used is not listed
    _write(os.path.join(report, "supernets", "bn-z-9999", "stopped.json"), stopped)

    rec = runs_on_record(report, {"used0001"}, {"bn-z-9999"}, resamples=200, seed=0)

    assert [t["key"] for t in rec["trainings"]] == ["drop0002"]
    t = rec["trainings"][0]
    assert t["iters"] == [2000] and t["trainings"] == 7 and t["subnets"] == 4
    assert t["seeds"] == [0, 1]
    assert t["top1_by_seed"]["0"] == dict(min=82.9, max=84.7, mean=pytest.approx(83.75), n=4)
    assert t["top1_by_seed"]["1"]["n"] == 3
    assert t["seconds_per_training"] == pytest.approx((4 * 10.0 + 3 * 30.0) / 7)
    # the agreement is over the three subnets with both seeds only
    assert t["agreement"]["tau"] == pytest.approx(kendall_tau(seed0[:3], seed1))
    assert rec["supernets"] == [dict(folder="bn-x-1234", **stopped)]


def test_fewer_than_three_pairs_give_no_agreement_and_an_empty_folder_is_skipped(tmp_path):
    report = str(tmp_path)
    _training(report, "drop0003", [0, 1], 0, 80.0, 5.0)
    _training(report, "drop0003", [0, 1], 1, 81.0, 5.0)
    _training(report, "drop0003", [1, 1], 0, 79.0, 5.0)
    os.makedirs(os.path.join(report, "truth", "empty000"))
    rec = runs_on_record(report, set(), set(), resamples=50, seed=0)
    assert [t["key"] for t in rec["trainings"]] == ["drop0003"]
    assert rec["trainings"][0]["agreement"] is None
    assert rec["supernets"] == []
    # nothing on record at all
    assert runs_on_record(str(tmp_path / "none"), set(), set(), 50, 0) == dict(
        trainings=[], supernets=[])
