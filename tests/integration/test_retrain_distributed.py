"""Retrain stage with 2 gloo ranks: exact distributed validation and DDP retraining.

The validation set has 21 images (an odd size), so world size 2 gives shards of 11 and
10; the distributed top-1/top-5 must equal the single-process ones exactly. Both launchers
are used: the legacy `torch.distributed.launch` (passes --local-rank) for --eval, torchrun
for a short DDP retrain; they run at the same time to save wall time.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, randomise_bn, run_env, write_imagefolder
from utils.checkpoints.io import load, save_atomic
from utils.data.loaders import build_val_loader
from utils.dist import DistEnv
from utils.spaces import get_space, make_config
from utils.train.evaluate import evaluate

pytestmark = pytest.mark.slow  # two DDP processes


SCRIPT = os.path.join(ROOT, "retrain", "train_from_scratch.py")
CFG = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)
ARCH = "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"
SPACE_FLAGS = ["--input-size", "32", "--width-mult", "0.25", "--stem-stride", "1",
               "--classes", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(net: torch.nn.Module, val_dir: str):
    loader = build_val_loader(val_dir, 32, 5, DistEnv(), 0)
    res = evaluate(net, loader)
    # The same counts from a plain loop over every image.
    correct = 0
    with torch.no_grad():
        net.eval()
        for batch in loader:
            x, y = loader.prepare(batch, torch.device("cpu"))
            correct += int(net(x).argmax(1).eq(y).sum())
    assert res.correct1 == correct and res.samples == 21
    return res


@pytest.fixture(scope="module")
def odd_val(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("odd"))
    write_imagefolder(root, classes=3, train_per_class=1, val_per_class=7, seed=3)
    return os.path.join(root, "val")


def test_two_rank_eval_and_ddp_retrain_match_single_process(tiny_data, odd_val, tmp_path):
    space = get_space(CFG)
    arch = space.parse(ARCH)
    torch.manual_seed(0)  # the weights come from the global RNG: fix them whatever ran before
    net = space.subnet(arch)
    randomise_bn(net, 0)
    ckpt = str(tmp_path / "random.pth.tar")
    # 4 outputs, named: the 3-class folder maps onto the first three by name
    save_atomic(dict(kind="subnet", config=CFG.to_dict(), arch=list(arch), iters=0,
                     state_dict=net.state_dict(), best_acc_top1=0.0,
                     classes=[f"class_{c}" for c in range(4)]), ckpt)
    env = run_env()
    env["BNNAS_TABLE_DIR"] = str(tmp_path / "tables")
    common = dict(cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
    legacy = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
         f"--master_port={_free_port()}", SCRIPT, "--eval", "--eval-resume", ckpt,
         "--test_dir", odd_val, "--batch_size", "4", "--workers", "0", "--save", "dist_eval"],
        **common)
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         SCRIPT, "--train_dir", os.path.join(tiny_data, "train"), "--test_dir", odd_val,
         *SPACE_FLAGS, "--model_id", ARCH, "--batch_size", "8", "--total_iters", "2",
         "--workers", "0", "--save", "ddp", "--learning_rate", "0.05"], **common)
    out_l, err_l = legacy.communicate(timeout=300)
    out_t, err_t = torchrun.communicate(timeout=300)
    assert legacy.returncode == 0, err_l[-3000:]
    assert torchrun.returncode == 0, err_t[-3000:]

    # --eval on 2 ranks == one process, counted exactly (11 + 10 images, nothing padded).
    got = json.load(open(tmp_path / "eval-dist_eval" / "eval.json"))
    want = _single_process(net, odd_val)
    assert 0 < want.correct1 < 21  # not a degenerate all-right / all-wrong model
    assert (got["correct_top1"], got["correct_top5"], got["samples"]) == \
        (want.correct1, want.correct5, 21)
    assert got["valid_acc_top1"] == want.top1 and got["valid_acc_top5"] == want.top5
    assert got["valid_loss"] == pytest.approx(want.loss, rel=1e-5)
    assert "2 processes (gloo)" in out_l

    # DDP retrain: "batch 8 global, 4 per process", and the top-1 it validated on 2 ranks
    # (after copying rank 0's BN statistics) is what one process gets from best.pth.tar.
    assert "batch 8 global, 4 per process" in out_t
    best = load(str(tmp_path / "eval-ddp" / "best.pth.tar"))
    assert best["iters"] == 2 and best["batch_size"] == 8
    trained = space.subnet(arch)
    trained.load_state_dict(best["state_dict"])
    again = _single_process(trained, odd_val)
    assert best["best_acc_top1"] == again.top1 and best["best_acc_top5"] == again.top5
