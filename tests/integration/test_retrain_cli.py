"""Retrain stage end to end: a short retrain, resuming, --eval, --arch-from, one-line errors.

The script's `main` runs in this process (a subprocess would spend most of its time
importing torch); the distributed launches are in test_retrain_distributed.py.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from conftest import ROOT
from utils.checkpoints.io import load, save_atomic
from utils.files import write_json_atomic
from utils.spaces import get_space, make_config


CFG = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)
# CPU even where a GPU is visible: the resume test compares weights bitwise.
TRAIN = ["--batch_size", "16", "--workers", "0", "--total_iters", "6", "--eval-freq", "3",
         "--report_freq", "2", "--learning_rate", "0.1", "--device", "cpu"]


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SCRIPT = _load("retrain_train_from_scratch", "retrain/train_from_scratch.py")


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the retrain script's main, run in this process."""
    capsys.readouterr()
    try:
        rc = SCRIPT.main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def write_search_log(log_dir: str) -> list[int]:
    """An ea_results.json in the agreed format whose top two candidates tie on score.

    The tie is broken by FLOPs, so the best one is not simply the first or the
    highest-scored entry listed. Returns that expected best architecture.
    """
    from utils.flops.table import load_table
    space = get_space(CFG)
    table = load_table(CFG, os.path.join(os.path.dirname(log_dir), "tables"))
    rng = np.random.default_rng(5)
    archs = []
    while len(archs) < 6:
        a = space.random_arch(rng)
        if a not in archs:
            archs.append(a)
    flops = [table.flops_of(a) for a in archs]
    order = np.argsort(flops)
    cheap, dear = archs[order[0]], archs[order[-1]]
    cands = [dict(arch=list(a), score=1.0 + 0.1 * i, flops=table.flops_of(a),
                  params=table.params_of(a), generation=0)
             for i, a in enumerate(a for a in archs if a not in (cheap, dear))]
    top = max(c["score"] for c in cands) + 1.0
    cands.insert(0, dict(arch=list(dear), score=top, flops=table.flops_of(dear),
                         params=table.params_of(dear), generation=1))
    cands.append(dict(arch=list(cheap), score=top, flops=table.flops_of(cheap),
                      params=table.params_of(cheap), generation=2))
    best = dict(cands[-1])
    write_json_atomic(dict(config=CFG.to_dict(), candidates=cands, best=best, exact=best,
                           flops_limit=int(max(flops)), score_kind="indicator"),
                      os.path.join(log_dir, "ea_results.json"))
    return list(cheap)


@pytest.fixture
def work(tiny_data, tmp_path, monkeypatch):
    """A working folder (eval-NAME/ lands there) with a search log and its own FLOPs tables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNNAS_TABLE_DIR", str(tmp_path / "tables"))
    log_dir = str(tmp_path / "log")
    expected = write_search_log(log_dir)
    data = ["--train_dir", os.path.join(tiny_data, "train"),
            "--test_dir", os.path.join(tiny_data, "val")]
    return dict(tmp=str(tmp_path), log_dir=log_dir, data=data, expected=expected)


def test_retrain_resume_eval_and_arch_from(work, capsys):
    data, log_dir = work["data"], work["log_dir"]
    cmd_a = [*data, *TRAIN, "--arch-from", log_dir, "--save", "a", "--stop-after", "4"]
    cmd_b = [*data, *TRAIN, "--arch-from", log_dir, "--save", "b"]
    rc, out, err = run(cmd_b, capsys)  # 6 iterations, uninterrupted
    assert rc == 0, err
    rc, out, err = run(cmd_a, capsys)  # the same, stopped after 4
    assert rc == 0, err
    assert "stopped by --stop-after 4 at iteration 4/6" in out
    a_ckpt = load("eval-a/checkpoint.pth.tar")
    assert a_ckpt["iters"] == 4 and not a_ckpt["finished"]
    rc, out, err = run(cmd_a, capsys)  # rerunning the same command resumes and finishes
    assert rc == 0, err
    assert "resuming from eval-a/checkpoint.pth.tar at iteration 4/6" in out
    rc, out, err = run(cmd_b, capsys)  # a finished run reports its result
    assert rc == 0, err
    assert "retraining already finished (6/6 iterations)" in out

    # --arch-from took eval.py's first-ranked architecture and the log's space config.
    _load("search_eval", "search/eval.py").main(["--log-dir", log_dir, "--json"])
    top = json.loads(capsys.readouterr().out)["top"][0]["arch"]
    assert top == work["expected"]
    b_best = load("eval-b/best.pth.tar")
    assert b_best["arch"] == top and b_best["config"] == CFG.to_dict()
    assert b_best["kind"] == "subnet" and "optimizer" in b_best and "rng" in b_best
    assert not any(k.startswith("module.") for k in b_best["state_dict"])

    # The logged best top-1 is reproduced exactly by --eval of best.pth.tar.
    lines = [json.loads(l) for l in open("eval-b/metrics.jsonl")]
    assert [l["step"] for l in lines if "valid_acc_top1" in l] == [3, 6]
    logged = max(l["valid_acc_top1"] for l in lines if "valid_acc_top1" in l)
    assert b_best["best_acc_top1"] == logged and b_best["iters"] == b_best["best_iters"]
    rc, out, err = run(["--eval", "--eval-resume", "eval-b/best.pth.tar", "--test_dir", data[3],
                        "--batch_size", "16", "--workers", "0", "--save", "b_eval",
                        "--device", "cpu"], capsys)
    assert rc == 0, err
    result = json.load(open("eval-b_eval/eval.json"))
    assert result["valid_acc_top1"] == logged
    assert result["samples"] == 20 and result["arch"] == top
    assert f"valid_acc_top1 {logged:.4f}" in out and "valid_acc_top5" in out

    # The same weights saved the reference's way (its names, no config, no arch) evaluate
    # identically given --model_id; its input convention defaults to the reference's BGR.
    from test_retrain_interop import to_reference_names
    save_atomic(dict(iters=6, best_acc_top1=logged, optimizer={},
                     state_dict=to_reference_names(b_best["state_dict"], top)), "ref.pth.tar")
    ref = ["--eval", "--eval-resume", "ref.pth.tar", "--test_dir", data[3], "--batch_size", "16",
           "--workers", "0", "--device", "cpu", "--model_id", " ".join(map(str, top)),
           "--input-size", "32", "--width-mult", "0.25", "--stem-stride", "1"]
    rc, out, err = run([*ref, "--input-format", "rgb"], capsys)
    assert rc == 0, err
    assert f"valid_acc_top1 {logged:.4f}" in out and "reference checkpoint" in out
    rc, out, err = run(ref, capsys)
    assert rc == 0, err
    assert "input bgr255" in out

    # The stopped and resumed run ends bitwise equal to the uninterrupted one.
    a_final, b_final = load("eval-a/checkpoint.pth.tar"), load("eval-b/checkpoint.pth.tar")
    assert a_final["iters"] == b_final["iters"] == 6 and a_final["finished"]
    for k, v in b_final["state_dict"].items():
        assert torch.equal(a_final["state_dict"][k], v), k
    assert a_final["best_acc_top1"] == b_final["best_acc_top1"]
    res = json.load(open("eval-b/result.json"))
    assert res["best_acc_top1"] == logged and res["iters"] == 6


def test_one_line_errors(work, capsys):
    data = work["data"]
    space = get_space(CFG)
    arch = work["expected"]
    other = space.format([(op + 1) % 6 if op >= 0 else op for op in arch])
    flags = ["--input-size", "32", "--width-mult", "0.25", "--stem-stride", "1"]
    state = dict(kind="subnet", config=CFG.to_dict(), arch=list(arch), iters=3,
                 state_dict=space.subnet(arch).state_dict(), best_acc_top1=50.0)
    save_atomic(state, "eval-x/checkpoint.pth.tar")
    save_atomic(dict(iters=1, state_dict={"module.conv_bn.0.weight": torch.zeros(1)}),
                "ref.pth.tar")
    save_atomic(dict(kind="supernet", config=CFG.to_dict(), state_dict={}), "super.pth.tar")
    cases = {
        "architecture token 'x' is not an integer": [*data, *TRAIN, "--model_id", "3 -1 0 4 x"],
        "layer 20 op 9 is out of range": [
            *data, *TRAIN, *flags, "--model_id", "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 9"],
        "--test_dir is required": ["--train_dir", data[1], *TRAIN],
        "test_dir is required (an ImageFolder": ["--eval", "--eval-resume",
                                                 "eval-x/checkpoint.pth.tar"],
        f"is for architecture '{space.format(arch)}', not '{other}'": [
            "--eval", "--eval-resume", "eval-x/checkpoint.pth.tar", "--test_dir", data[3],
            "--model_id", other, "--workers", "0", "--device", "cpu"],
        f"not '{other}': use another --save name": [
            *data, *TRAIN, *flags, "--save", "x", "--model_id", other],
        "give either --model_id or --arch-from": [*data, "--model_id", other, "--arch-from", "log"],
        "does not record its architecture: give it with --model_id": [
            "--eval", "--eval-resume", "ref.pth.tar", "--test_dir", data[3]],
        "is a supernet checkpoint, not a subnet checkpoint": [
            "--eval", "--eval-resume", "super.pth.tar", "--test_dir", data[3]],
    }
    for needle, args in cases.items():
        rc, out, err = run(args, capsys)
        assert rc == 2, (needle, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (needle, err)
        assert needle in lines[0], (needle, lines[0])


def test_resume_says_which_changed_settings_apply_and_keeps_the_decay_groups(work, capsys):
    base = [*work["data"], *TRAIN, "--arch-from", work["log_dir"], "--save", "c"]
    rc, _, err = run([*base, "--stop-after", "2"], capsys)
    assert rc == 0, err
    # lr and momentum come back from the optimizer state; label smoothing is applied
    rc, out, err = run([*base, "--stop-after", "1", "--learning_rate", "0.2", "--momentum",
                        "0.5", "--label_smooth", "0.2"], capsys)
    assert rc == 0, err
    text = out + err
    assert "note: resuming with changed label_smooth (the checkpoint used label_smooth=0.1)" \
        in text
    assert ("note: learning_rate, momentum continue from the checkpoint's optimizer state "
            "(learning_rate=0.1, momentum=0.9); the new values are not used") in text
    before = load(os.path.join("eval-c", "checkpoint.pth.tar"))["iters"]
    # another weight-decay group would not fit the saved optimizer: one line, nothing lost
    rc, out, err = run([*base, "--decay-params", "conv+linear-weight"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: checkpoint {os.path.join('eval-c', 'checkpoint.pth.tar')} was trained with "
        f"--decay-params conv; resume with --decay-params conv or use another --save"]
    assert load(os.path.join("eval-c", "checkpoint.pth.tar"))["iters"] == before
