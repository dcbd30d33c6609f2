"""Smoke test of bench/data_loader.py on a handful of small JPEGs (no timing assertions)."""
from __future__ import annotations

import json
import os
import sys

import pytest
from PIL import Image

from conftest import ROOT


@pytest.fixture(autouse=True)
def _rng(keep_global_rng):
    """Every test here leaves torch's global RNG as found."""


def _bench():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import data_loader
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    return data_loader


def test_quick_bench_times_both_pipelines_on_the_same_images(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--quick", "--json", "--cache-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"bench", "unit", "photos", "config", "machine", "results", "goal_ratio",
            "meets_goal", "meets_goal_cpu", "seconds"} <= set(out)
    photos = out["photos"]
    # scikit-image is optional: without it the set is cut from matplotlib's photograph
    assert photos["source"].startswith(("scikit-image", "matplotlib", "synthetic"))
    assert photos["count"] == 16 and photos["dir"].startswith(str(tmp_path))
    assert max(photos["mean_width"], photos["mean_height"]) <= 96
    assert [r["workers"] for r in out["results"]] == [1, 0]
    for r in out["results"]:
        # one warm-up epoch is untimed; one timed round of 16 images per pipeline
        assert r["images"] == {"project": 16, "torchvision": 16}
        assert r["batch_shape"] == [4, 3, 32, 32]
        assert r["project_img_s"] > 0 and r["torchvision_img_s"] > 0
        assert r["ratio"] == round(r["project_img_s"] / r["torchvision_img_s"], 3)
        assert len(r["rounds"]["project"]) == len(r["rounds"]["torchvision"]) == 1
        # CPU-time rates: None only when an epoch used less than one clock tick
        cpu = (r["project_cpu_img_s"], r["torchvision_cpu_img_s"])
        assert all(v is None or v > 0 for v in cpu)
        assert r["cpu_ratio"] == (round(cpu[0] / cpu[1], 3) if all(cpu) else None)
    assert out["meets_goal"] == all(r["ratio"] >= 1.5 for r in out["results"])
    # the photo set is cached: a second run reuses it
    assert bench.main(["--quick", "--json", "--cache-dir", str(tmp_path), "--workers", "0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["photos"]["dir"] == photos["dir"]
    assert len(os.listdir(tmp_path)) == 1


def test_photo_sources_fall_back_to_matplotlib_then_labelled_synthetic(tmp_path, monkeypatch):
    bench = _bench()
    real = bench._package_dir
    monkeypatch.setattr(bench, "_package_dir", lambda n: None if n == "skimage" else real(n))
    label, paths = bench.photo_sources("auto", None)
    assert label.startswith("matplotlib") and [os.path.basename(p) for p in paths] == \
        ["grace_hopper.jpg"]
    monkeypatch.setattr(bench, "_package_dir", lambda n: None)
    label, paths = bench.photo_sources("auto", None)
    assert paths == [] and "synthetic" in label and "not photographs" in label
    with pytest.raises(bench.UserError, match="--source skimage"):
        bench.photo_sources("skimage", None)

    bench.make_photo_set(str(tmp_path / "set"), [], 3, 2, 64)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "set") for f in fs)
    assert [os.path.relpath(f, tmp_path / "set") for f in files] == \
        ["class_00/00000.jpg", "class_00/00002.jpg", "class_01/00001.jpg"]
    assert [Image.open(f).size for f in files] == [(64, 48), (64, 43), (48, 64)]
    assert all(Image.open(f).format == "JPEG" for f in files)


def test_bad_photos_folder_is_a_one_line_error(tmp_path, capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--photos", str(tmp_path / "missing"), "--cache-dir",
                    str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == \
        f"error: --photos {tmp_path / 'missing'} is not a directory"
