"""utils/data/datasets.py: the dataset registry, Fashion-MNIST read in memory, plug-ins.

* Both built-in datasets are listed and selectable with --dataset (default imagefolder).
* fashion_mnist from a slice gives the same batches (pixels, labels, lighting) as the PNG
  tree tools/demo_data.py writes of that slice at 28x28, prepared with its own mean/std.
* The same seed gives the same batches twice, also through worker processes.
* An unknown dataset name and a bad root are one-line UserErrors; fingerprints tell the
  two sources apart, so resuming on the other one is refused.
* A dataset defined in a file outside the repository (docs/examples/toy_dataset.py,
  loaded from a temp copy with utils.plugins.load_plugin) is a --dataset choice and
  builds a loader.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_env
from utils.data import demo
from utils.data.datasets import (DATASETS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, DatasetSpec,
                                 get_dataset)
from utils.data.identity import check_resume_data, loader_fingerprint
from utils.data.loaders import add_data_args, build_train_loader, build_val_loader, prepare_batch
from utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.dist import DistEnv
from utils.errors import UserError
from utils.plugins import load_plugin

CPU = torch.device("cpu")
ENV = DistEnv()


@pytest.fixture(autouse=True)
def _rng(keep_global_rng):
    """Every test here leaves torch's global RNG as found."""


@pytest.fixture(scope="module")
def small_slice(tmp_path_factory) -> str:
    """A slice in the committed format: the first 6 train / 3 val images of each class of
    data/fashion_mnist/fashion_mnist_slice.npz."""
    full = demo.load_slice()
    arrays = {"classes": full["classes"]}
    for split, n in (("train", 6), ("val", 3)):
        labels = full[f"{split}_labels"]
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(10)]))
        for k in ("images", "labels", "source_index"):
            arrays[f"{split}_{k}"] = full[f"{split}_{k}"][keep]
    path = str(tmp_path_factory.mktemp("slice") / "small_slice.npz")
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def slice_tree(small_slice, tmp_path_factory) -> str:
    """The PNG tree tools/demo_data.py writes of that slice, at the images' own 28x28."""
    out = str(tmp_path_factory.mktemp("tree") / "fmnist")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo_data.py"),
                           "--out", out, "--size", "28", "--slice-path", small_slice,
                           "--workers", "1"], capture_output=True, text=True, timeout=120,
                          env=run_env())
    assert proc.returncode == 0, proc.stderr
    return out


def _batches(loader, epochs=(0, 1)):
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        out.extend(list(loader))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(p, q) for p, q in zip(x, y)) for x, y in zip(a, b))


# ---- the registry ---------------------------------------------------------------------

def test_registry_lists_both_and_the_flag_defaults_to_imagefolder():
    assert {"imagefolder", "fashion_mnist"} <= set(DATASETS.names())
    assert DATASETS.names()[0] == "imagefolder"
    p = argparse.ArgumentParser()
    add_data_args(p)
    assert p.parse_args([]).dataset == "imagefolder"
    assert p.parse_args(["--dataset", "fashion_mnist"]).dataset == "fashion_mnist"
    spec = get_dataset("fashion_mnist")
    assert isinstance(spec, DatasetSpec) and get_dataset(spec) is spec
    assert get_dataset(None).name == "imagefolder"
    assert get_dataset(None).mean == IMAGENET_MEAN and get_dataset(None).std == IMAGENET_STD
    # Grey replicated to RGB: one statistic for all three channels.
    assert spec.mean == FASHION_MNIST_MEAN and len(set(spec.mean)) == 1
    assert 0.28 < spec.mean[0] < 0.29 and 0.35 < spec.std[0] < 0.36


def test_unknown_dataset_is_one_line():
    with pytest.raises(UserError) as e:
        get_dataset("cifar")
    msg = str(e.value)
    assert "\n" not in msg and "unknown dataset 'cifar'" in msg and "fashion_mnist" in msg
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        build_train_loader("slice", 24, 8, ENV, 0, 0, dataset="cifar")
    p = argparse.ArgumentParser()
    add_data_args(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--dataset", "cifar"])


@pytest.mark.parametrize("root, expect", [
    ("nowhere", "--train_dir nowhere is not 'debian', 'slice', a .npz file or a folder"),
    ("missing.npz", "--train_dir missing.npz does not exist"),
    (None, "--train_dir is required with --dataset fashion_mnist"),
    ("EMPTY", "train-images-idx3-ubyte.gz not found"),
])
def test_bad_fashion_mnist_root_is_one_line(root, expect, tmp_path):
    if root == "EMPTY":
        root = str(tmp_path)  # a folder without the idx files
    with pytest.raises(UserError) as e:
        build_train_loader(root, 24, 8, ENV, 0, 0, dataset="fashion_mnist")
    assert "\n" not in str(e.value) and expect in str(e.value)
    assert get_dataset("fashion_mnist").count_classes(root) is None


def test_bad_imagefolder_root_is_one_line(tmp_path):
    with pytest.raises(UserError) as e:
        build_val_loader(str(tmp_path / "nope"), 24, 8, ENV, 0, dataset="imagefolder")
    assert str(e.value) == f"--test_dir {tmp_path / 'nope'} does not exist"


# ---- fashion_mnist in memory == its PNG tree -------------------------------------------

def test_fashion_mnist_slice_equals_its_png_tree(small_slice, slice_tree):
    tree = build_train_loader(os.path.join(slice_tree, "train"), 24, 20, ENV, 0, 7)
    mem = build_train_loader(small_slice, 24, 20, ENV, 0, 7, dataset="fashion_mnist")
    assert mem.classes == tree.classes == sorted(os.listdir(os.path.join(slice_tree, "train")))
    assert mem.num_classes == 10 and len(mem.dataset) == len(tree.dataset) == 60
    assert [y for _, y in mem.dataset.samples] == [y for _, y in tree.dataset.samples]
    a, b = _batches(tree), _batches(mem)
    assert len(a) == 2 * 3 and _same(a, b)  # same crops, flips, lighting and labels
    assert a[0][0].shape == (20, 3, 24, 24) and a[0][0].dtype == torch.uint8
    assert all(torch.equal(x[0][:, 0], x[0][:, 2]) for x in b)  # grey: R = G = B

    # prepared with fashion_mnist's own statistics, not ImageNet's
    x, y = mem.prepare(b[0], CPU)
    lit = ((b[0][0].float() / 255 + b[0][2].view(-1, 3, 1, 1)) * 255).clamp(0, 255).floor()
    ref = (lit / 255 - torch.tensor(FASHION_MNIST_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(FASHION_MNIST_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-5) and torch.equal(y, b[0][1])
    assert torch.equal(x, prepare_batch(b[0], CPU, dataset="fashion_mnist")[0])
    assert not torch.allclose(x, tree.prepare(a[0], CPU)[0])  # the tree: ImageNet mean/std

    vtree = build_val_loader(os.path.join(slice_tree, "val"), 24, 8, ENV, 0)
    vmem = build_val_loader(small_slice, 24, 8, ENV, 0, dataset="fashion_mnist")
    assert vmem.num_samples == vtree.num_samples == 30
    assert _same(list(vtree), list(vmem))
    # linear resize mode goes through the same code for both
    ltree = build_val_loader(os.path.join(slice_tree, "val"), 24, 8, ENV, 0, resize_mode="linear")
    lmem = build_val_loader(small_slice, 24, 8, ENV, 0, resize_mode="linear",
                            dataset="fashion_mnist")
    assert _same(list(ltree), list(lmem))
    assert vmem.first_unreadable() is None


def test_same_seed_same_batches_also_through_workers(small_slice):
    one = build_train_loader(small_slice, 20, 12, ENV, 0, 3, dataset="fashion_mnist")
    two = build_train_loader(small_slice, 20, 12, ENV, 1, 3, dataset="fashion_mnist",
                             persistent=False)
    other = build_train_loader(small_slice, 20, 12, ENV, 0, 4, dataset="fashion_mnist")
    with two:
        a, b = _batches(one), _batches(two)
    assert _same(a, b)
    assert not _same(a, _batches(other))
    # a resumed epoch sees the steps an uninterrupted one does
    one.set_epoch(1, 2)
    assert _same(list(one), a[5 + 2:])


def test_fingerprints_tell_the_sources_apart(small_slice, slice_tree, tmp_path):
    mem = build_train_loader(small_slice, 24, 20, ENV, 0, 7, dataset="fashion_mnist")
    tree = build_train_loader(os.path.join(slice_tree, "train"), 24, 20, ENV, 0, 7)
    fm, ft = loader_fingerprint(small_slice, mem), loader_fingerprint(
        os.path.join(slice_tree, "train"), tree)
    assert fm["classes"] == ft["classes"] and fm["counts"] == ft["counts"] == [6] * 10
    assert fm["files_sha256"] != ft["files_sha256"]
    again = build_train_loader(small_slice, 24, 10, ENV, 0, 1, dataset="fashion_mnist")
    check_resume_data(fm, loader_fingerprint(small_slice, again), "ck", False, print)
    with pytest.raises(UserError, match="same counts but other file names"):
        check_resume_data(ft, fm, "ck", False, print)
    full = build_train_loader("slice", 24, 20, ENV, 0, 7, dataset="fashion_mnist")
    with pytest.raises(UserError, match=r"60 vs 6000 images"):
        check_resume_data(fm, loader_fingerprint("slice", full), "ck", False, print)


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_a_folder_of_idx_files_is_read_without_writing_pngs(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("val", 20)):
        img_stem, lab_stem = demo.IDX_FILES[split]
        _write_idx(tmp_path / f"{img_stem}.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{lab_stem}.gz", np.arange(n) % 10)
    before = sorted(os.listdir(tmp_path))
    train = build_train_loader(str(tmp_path), 24, 10, ENV, 0, 0, dataset="fashion_mnist")
    val = build_val_loader(str(tmp_path), 24, 8, ENV, 0, dataset="fashion_mnist")
    assert len(train.dataset) == 30 and val.num_samples == 20  # train split, then t10k
    assert len(_batches(train, (0,))) == 3 and sum(len(y) for _, y in val) == 20
    assert sorted(os.listdir(tmp_path)) == before
    assert get_dataset("fashion_mnist").count_classes(str(tmp_path)) == 10


def test_spos_scoring_reads_the_dataset(small_slice, slice_tree):
    from utils.search.spos import SposScorer
    from utils.spaces import get_space, make_config
    space = get_space(make_config("mobilenet", input_size=24, width_mult=0.25, classes=10))
    torch.manual_seed(0)
    state = space.supernet().state_dict()
    kw = dict(bn_batches=2, batch_size=8, val_images=12, device="cpu", seed=0, workers=0,
              log=lambda m: None)
    mem = SposScorer(space, state, small_slice, small_slice, dataset="fashion_mnist", **kw)
    tree = SposScorer(space, state, os.path.join(slice_tree, "train"),
                      os.path.join(slice_tree, "val"), **kw)
    assert torch.equal(mem.train_images, tree.train_images)
    assert torch.equal(mem.val_x, tree.val_x) and torch.equal(mem.val_y, tree.val_y)
    assert mem.dataset.name == "fashion_mnist" and tree.dataset.name == "imagefolder"
    arch = space.random_arch(np.random.default_rng(1))
    assert 0.0 <= mem.score_one(arch) <= 100.0


# ---- the validation crop fraction --------------------------------------------------------

def test_val_crop_pct_one_is_a_plain_resize_of_the_whole_image(small_slice):
    from PIL import Image

    from utils.data.transforms import (VAL_CROP_FRACTION, recorded_crop_pct, to_uint8_chw,
                                       val_resize_size)
    assert val_resize_size(16, 1.0) == 16 and val_resize_size(16) == 18
    assert val_resize_size(224) == 256
    whole = build_val_loader(small_slice, 16, 30, ENV, 0, dataset="fashion_mnist",
                             crop_pct=1.0)
    usual = build_val_loader(small_slice, 16, 30, ENV, 0, dataset="fashion_mnist")
    x, _ = next(iter(whole))
    rows = demo.load_slice(small_slice)["val_images"]
    row = whole.dataset.samples[0][0]
    want = to_uint8_chw(Image.fromarray(rows[row]).convert("RGB").resize((16, 16),
                                                                         Image.BILINEAR))
    assert torch.equal(x[0], want)  # the whole 28x28 image, resized to 16x16
    # 0.875: shorter side 18, then the centre 16x16 of it
    short = val_resize_size(16, VAL_CROP_FRACTION)
    big = to_uint8_chw(Image.fromarray(rows[row]).convert("RGB").resize((short, short),
                                                                        Image.BILINEAR))
    got = next(iter(usual))[0][0]  # (the box is resized, not the whole: within 1 level)
    assert (got.int() - big[:, 1:17, 1:17].int()).abs().max() <= 1
    assert (got.int() - want.int()).abs().max() > 10
    # old checkpoints (no record, or nonsense) validated at the default
    assert recorded_crop_pct({}) == recorded_crop_pct(dict(val_crop_pct="x")) == 0.875
    assert recorded_crop_pct(dict(val_crop_pct=1.0)) == 1.0
    with pytest.raises(ValueError):
        build_val_loader(small_slice, 16, 30, ENV, 0, dataset="fashion_mnist", crop_pct=1.5)


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_bad_val_crop_pct_is_refused_while_parsing(value, capsys):
    from utils.cli.argtypes import ArgumentParser
    from utils.data.loaders import add_val_crop_arg
    p = ArgumentParser()
    add_val_crop_arg(p)
    assert p.parse_args([]).val_crop_pct == 0.875
    assert p.parse_args(["--crop-pct", "1"]).val_crop_pct == 1.0
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--val-crop-pct", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "argument --val-crop-pct" in err[0]


def test_recorded_dataset_of_old_and_plugin_checkpoints():
    from utils.data.datasets import recorded_dataset
    assert recorded_dataset({}) == recorded_dataset(None) == "imagefolder"
    assert recorded_dataset(dict(dataset="fashion_mnist")) == "fashion_mnist"
    with pytest.raises(UserError, match="trained on --dataset toy, which is not registered"):
        recorded_dataset(dict(dataset="toy"), "ck.pth.tar")
    with pytest.raises(UserError, match=r"^--train_dir is required \(an ImageFolder"):
        get_dataset("imagefolder").require_root(None, "--train_dir")


# ---- a plug-in dataset ---------------------------------------------------------------------

def test_a_plugin_dataset_is_a_choice_and_builds_a_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))  # unregistered afterwards
    plugin = tmp_path / "toy_dataset.py"
    shutil.copy(os.path.join(ROOT, "docs", "examples", "toy_dataset.py"), plugin)
    load_plugin(str(plugin))
    assert "toy" in DATASETS
    p = argparse.ArgumentParser()
    add_data_args(p)
    assert p.parse_args(["--dataset", "toy"]).dataset == "toy"
    loader = build_train_loader("3", 16, 8, ENV, 0, 1, dataset="toy")
    assert loader.classes == ["red", "green", "blue", "grey"] and loader.steps_per_epoch == 12
    x, y, light = next(iter(loader))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.uint8 and light.shape == (8, 3)
    prepared, _ = loader.prepare((x, y, light), CPU)
    assert torch.equal(prepared, prepare_batch((x, y, light), CPU, dataset="toy")[0])
    assert not torch.allclose(prepared, prepare_batch((x, y, light), CPU)[0])  # toy's mean/std
    val = build_val_loader("3", 16, 8, ENV, 0, dataset="toy")
    assert val.num_samples == 32
    assert loader_fingerprint("3", loader)["counts"] == [24] * 4
    with pytest.raises(UserError, match="takes an integer seed"):
        build_train_loader("x", 16, 8, ENV, 0, 1, dataset="toy")
