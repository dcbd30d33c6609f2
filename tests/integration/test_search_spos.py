"""utils/search/spos.py and `ea.py --score accuracy`: the SPOS baseline scoring."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from tests.search_helpers import (_tables_env, read_json, save_supernet,  # noqa: F401
                                  search_table_dir, tiny_config)
from utils.cli.common import main_guard
from utils.data.loaders import prepare_batch
from utils.search.run import build_parser, run_search
from utils.spaces import get_space
from utils.search.spos import SposScorer


@main_guard
def ea_main(argv):
    run_search(build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def spos_setup(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("spos")
    cfg = tiny_config()
    ck = str(d / "spos.pth.tar")
    net = save_supernet(ck, cfg, train_all=True, seed=5)
    bn_only = str(d / "bnnas.pth.tar")
    save_supernet(bn_only, cfg, train_all=False, seed=5)
    return dict(dir=d, cfg=cfg, ck=ck, bn_only=bn_only, state=net.state_dict(),
                train=os.path.join(tiny_data, "train"), val=os.path.join(tiny_data, "val"))


def make_scorer(s, **kw):
    space = get_space(s["cfg"])
    args = dict(bn_batches=2, batch_size=8, val_images=12, device="cpu", seed=0, workers=0,
                log=lambda m: None)
    args.update(kw)
    return SposScorer(space, s["state"], s["train"], s["val"], **args)


def test_accuracy_is_recalibrated_top1_on_a_fixed_subset(spos_setup):
    s = spos_setup
    space = get_space(s["cfg"])
    scorer = make_scorer(s)
    rng = np.random.default_rng(0)
    a, b = space.random_arch(rng), space.random_arch(rng)
    acc_a = scorer.score_one(a)
    scorer.score_one(b)
    assert scorer.score_one(a) == acc_a  # no state carried over from other candidates
    # The same images in the same order every time, and for a second scorer too.
    other = make_scorer(s)
    assert torch.equal(other.train_images, scorer.train_images)
    assert torch.equal(other.val_x, scorer.val_x) and scorer.val_images == 12
    assert other.score_one(a) == acc_a

    # By hand: the standalone subnet, BN statistics recomputed as an exact mean over the
    # same 2 batches of 8 in train mode, then top-1 in eval mode.
    net = space.subnet(a, dropout=0.0, supernet=s["state"])
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for lo in (0, 8):
            x, _ = prepare_batch((scorer.train_images[lo:lo + 8], scorer.train_labels[lo:lo + 8]),
                                 torch.device("cpu"))
            net(x)
        net.eval()
        x, y = prepare_batch((scorer.val_x, scorer.val_y), torch.device("cpu"))
        correct = (net(x).argmax(1) == y).sum().item()
    assert acc_a == pytest.approx(100.0 * correct / 12)


def test_small_data_reduces_bn_batches(spos_setup):
    notes = []
    scorer = make_scorer(spos_setup, bn_batches=200, log=notes.append)
    assert scorer.bn_batches == 6 and len(scorer.train_images) == 48  # all 48 train images
    assert any("fewer than" in n for n in notes)


def test_ea_with_accuracy_scoring(spos_setup, capsys):
    s = spos_setup
    log = str(s["dir"] / "log")
    common = ["--checkpoint", s["ck"], "--score", "accuracy", "--train_dir", s["train"],
              "--test_dir", s["val"], "--bn-batches", "1", "--batch-size", "8",
              "--val-images", "8", "--device", "cpu", "--workers", "0",
              "--population-num", "3", "--select-num", "2", "--mutation-num", "1",
              "--crossover-num", "1", "--max-epochs", "1", "--flops-limit", "1.2"]
    ea_main(common + ["--log-dir", log])
    out = capsys.readouterr().out
    assert "no exact search" in out and "SPOS accuracy scoring:" in out
    res = read_json(log)
    assert res["score_kind"] == "accuracy" and res["method"] == "ea" and res["exact"] is None
    assert 3 <= len(res["candidates"]) <= 6
    for c in res["candidates"]:
        assert c["score"] in {100.0 * k / 8 for k in range(9)} and c["flops"] <= 1.2e6
    pth = torch.load(os.path.join(log, "ea_results.pth.tar"), weights_only=True)
    info = next(iter(pth["vis_dict"].values()))
    assert info["acc"] == info["score"] and info["err"] == 100.0 - info["score"]


def test_accuracy_scoring_refuses_a_bn_only_supernet(spos_setup, capsys):
    s = spos_setup
    with pytest.raises(SystemExit) as e:
        ea_main(["--checkpoint", s["bn_only"], "--score", "accuracy", "--log-dir",
                 str(s["dir"] / "refused")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --score accuracy needs a supernet trained with --train-all")
    assert not os.path.exists(s["dir"] / "refused")
    # ... and the indicator on a fully trained (SPOS) supernet is allowed, with a warning.
    ea_main(["--checkpoint", s["ck"], "--method", "exact", "--log-dir", str(s["dir"] / "w")])
    assert "warning:" in capsys.readouterr().out
