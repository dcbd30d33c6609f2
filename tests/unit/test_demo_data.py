"""Tests for utils/data/demo.py.

CI has no Debian dataset-fashion-mnist package, so everything here uses the
committed slice or tiny synthetic idx files written into tmp_path.
"""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
# pytest puts tests/ on sys.path, not the repo root.
sys.path.insert(0, str(REPO_ROOT))

from utils.data import demo as dd  # noqa: E402

SCRIPT = REPO_ROOT / "tools" / "demo_data.py"
FOLDERS = ["0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
           "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot"]


def run_cli(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("dd") / "tree"
    summary = dd.write_tree(out, size=16, train_per_class=5, val_per_class=3)
    return out, summary


# ------------------------------------------------------------- committed slice

def test_slice_is_stratified_uint8_and_loads_without_pickle():
    with np.load(dd.SLICE_PATH, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    for split, per_class in (("train", 600), ("val", 200)):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.shape == (10 * per_class, 28, 28)
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
        src = data[f"{split}_source_index"]
        assert len(np.unique(src)) == len(src)  # no image picked twice
    assert data["classes"].dtype.kind == "U"
    assert data["classes"].tolist() == list(dd.CLASSES)


def test_slice_is_small_enough_to_commit():
    assert dd.SLICE_PATH.stat().st_size < 5_000_000


# ------------------------------------------------------------- writing a tree

def test_tree_counts_and_class_order(small_tree):
    out, summary = small_tree
    assert not summary["skipped"]
    for split, n in (("train", 5), ("val", 3)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == FOLDERS  # sorted names == label order
        for folder in folders:
            assert len(list((out / split / folder).glob("*.png"))) == n
    marker = json.loads((out / dd.MARKER).read_text())
    assert marker["request"]["size"] == 16
    assert marker["total"] == 10 * (5 + 3)


def test_images_are_rgb_grey_at_requested_size(small_tree):
    out, _ = small_tree
    for path in sorted((out / "val").rglob("*.png"))[:10]:
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (16, 16)
            px = np.asarray(im)
        # Greyscale replicated: all three channels identical.
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()


def test_imagefolder_labels_match_fashion_mnist(small_tree):
    datasets = pytest.importorskip("torchvision.datasets")
    out, _ = small_tree
    ds = datasets.ImageFolder(str(out / "train"))
    assert ds.class_to_idx == {f: i for i, f in enumerate(FOLDERS)}
    assert len(ds) == 50


def test_tree_pixels_come_from_the_slice(tmp_path):
    # At size 28 no resampling happens, so the PNG must equal the source image.
    out = tmp_path / "t28"
    dd.write_tree(out, size=28, train_per_class=1, val_per_class=1)
    data = dd.load_slice()
    for path in (out / "train").rglob("*.png"):
        src_index = int(path.stem)
        pos = int(np.flatnonzero(data["train_source_index"] == src_index)[0])
        assert FOLDERS[data["train_labels"][pos]] == path.parent.name
        with Image.open(path) as im:
            assert (np.asarray(im)[..., 0] == data["train_images"][pos]).all()


def test_process_pool_path_writes_same_tree(tmp_path, monkeypatch):
    # Small requests normally stay in-process; force the pool to cover it too.
    monkeypatch.setattr(dd, "POOL_THRESHOLD", 0)
    out = tmp_path / "pool"
    summary = dd.write_tree(out, size=12, train_per_class=4, val_per_class=2, workers=2)
    assert summary["total"] == 60
    assert len(list(out.rglob("*.png"))) == 60


def test_rerun_is_a_noop(small_tree):
    out, _ = small_tree
    files = sorted(out.rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in files}
    marker_mtime = (out / dd.MARKER).stat().st_mtime_ns
    again = dd.write_tree(out, size=16, train_per_class=5, val_per_class=3)
    assert again["skipped"]
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert (out / dd.MARKER).stat().st_mtime_ns == marker_mtime


def test_cli_rerun_says_nothing_to_do(tmp_path):
    out = tmp_path / "cli"
    args = (SCRIPT, "--out", out, "--size", "8", "--train-per-class", "2", "--val-per-class", "1")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("\n") == 1 and "wrote 30 PNGs" in first.stdout
    second = run_cli(*args)
    assert second.returncode == 0 and "nothing to do" in second.stdout


def test_changed_request_rebuilds_atomically(tmp_path):
    out = tmp_path / "tree"
    dd.write_tree(out, size=16, train_per_class=2, val_per_class=1)
    summary = dd.write_tree(out, size=20, train_per_class=3, val_per_class=1)
    assert not summary["skipped"]
    with Image.open(next((out / "train" / FOLDERS[0]).glob("*.png"))) as im:
        assert im.size == (20, 20)
    assert len(list((out / "train").rglob("*.png"))) == 30
    # No partial or old trees left beside DIR.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_incomplete_tree_is_rebuilt(tmp_path):
    out = tmp_path / "tree"
    dd.write_tree(out, size=8, train_per_class=2, val_per_class=1)
    next((out / "val" / FOLDERS[3]).glob("*.png")).unlink()
    summary = dd.write_tree(out, size=8, train_per_class=2, val_per_class=1)
    assert not summary["skipped"]
    assert len(list((out / "val").rglob("*.png"))) == 10


def test_failed_write_leaves_no_tree(tmp_path, monkeypatch):
    def boom(job):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(dd, "_write_pngs", boom)
    with pytest.raises(RuntimeError):
        dd.write_tree(tmp_path / "tree", size=8, train_per_class=1, val_per_class=1)
    assert list(tmp_path.iterdir()) == []


def test_foreign_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = run_cli(SCRIPT, "--out", out, "--train-per-class", "1", "--val-per-class", "1")
    assert_one_line_error(proc)
    assert (out / "notes.txt").read_text() == "keep me"


def test_script_runs_from_any_folder(tmp_path):
    # The installed checkout is the bootstrap: no sys.path shim, so cwd must not matter.
    proc = run_cli(SCRIPT, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--source" in proc.stdout, proc.stderr


# ------------------------------------------------------------- bad input

def test_bad_source_exits_2_with_one_line(tmp_path):
    proc = run_cli(SCRIPT, "--out", tmp_path / "x", "--source", "imagenet")
    assert_one_line_error(proc)
    assert "--source" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args", [("--size", "0"), ("--train-per-class", "abc"), ()])
def test_bad_arguments_exit_2(tmp_path, args):
    extra = ("--out", tmp_path / "x") if args else ()
    assert_one_line_error(run_cli(SCRIPT, *extra, *args))


def test_too_many_per_class_exits_2(tmp_path):
    proc = run_cli(SCRIPT, "--out", tmp_path / "x", "--train-per-class", "601")
    assert_one_line_error(proc)
    assert "601" in proc.stderr


def test_debian_source_missing_files_exits_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(SCRIPT, "--out", tmp_path / "x", "--source", "debian", "--debian-dir", empty)
    assert_one_line_error(proc)
    assert "not found" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_make_slice_missing_files_exits_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    target = tmp_path / "slice.npz"  # never the committed slice
    proc = run_cli(SCRIPT, "--make-slice", "--debian-dir", empty, "--slice-path", target)
    assert_one_line_error(proc)
    assert not target.exists()


# ------------------------------------------------------------- make_slice on fake idx files

def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_debian(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "fmnist"
    root.mkdir()
    for stem, n in (("train", 80), ("t10k", 40)):
        labels = np.repeat(np.arange(10), n // 10)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(n, 28, 28))
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root


def test_make_slice_is_stratified_and_reproducible(tmp_path, fake_debian):
    a = dd.make_slice(fake_debian, tmp_path / "a.npz", train_per_class=3, val_per_class=2)
    b = dd.make_slice(fake_debian, tmp_path / "b.npz", train_per_class=3, val_per_class=2)
    assert a.read_bytes() == b.read_bytes()  # fixed zip timestamps, fixed seed
    data = dd.load_slice(a)
    assert np.bincount(data["train_labels"], minlength=10).tolist() == [3] * 10
    assert np.bincount(data["val_labels"], minlength=10).tolist() == [2] * 10
    full = dd.load_debian(fake_debian)
    idx = data["train_source_index"]
    assert (full["train_images"][idx] == data["train_images"]).all()


def test_debian_source_writes_full_split(tmp_path, fake_debian):
    out = tmp_path / "tree"
    proc = run_cli(SCRIPT, "--out", out, "--source", "debian", "--debian-dir", fake_debian,
                   "--size", "8")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "train").rglob("*.png"))) == 80
    assert len(list((out / "val").rglob("*.png"))) == 40


def test_corrupt_idx_file_exits_2(tmp_path, fake_debian):
    (fake_debian / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    proc = run_cli(SCRIPT, "--out", tmp_path / "x", "--source", "debian", "--debian-dir", fake_debian)
    assert_one_line_error(proc)
