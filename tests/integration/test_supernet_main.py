"""supernet/main.py end to end: exact resume, launchers, one-line errors."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_env

SCRIPT = os.path.join(ROOT, "supernet", "main.py")
TINY = ["--input-size", "32", "--width-mult", "0.25", "--stem-stride", "2",
        "--batch_size", "8", "--report_freq", "2"]


def run_main(args: list[str]) -> int:
    """Run supernet/main.py in this process (cheaper than a subprocess); returns exit code."""
    from supernet.main import main
    try:
        return main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def params(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_interrupted_and_resumed_run_is_bit_identical(tiny_data, tmp_path, monkeypatch, capsys):
    train = ["--train_dir", os.path.join(tiny_data, "train"), *TINY, "--total_iters", "8"]
    full = str(tmp_path / "full" / "checkpoint.pth.tar")
    assert run_main([*train, "--workers", "0", "--checkpoint", full]) == 0

    # Same command, other worker count: SIGTERM during iteration 2 -> the step finishes,
    # a checkpoint at iteration 3 is written, exit 143.
    cut = str(tmp_path / "cut" / "checkpoint.pth.tar")
    cmd = [*train, "--workers", "1", "--checkpoint", cut]
    from utils.train.supernet import SupernetTrainer
    real_step = SupernetTrainer.step

    def step_then_signal(self, x, y, it, arch=None):
        out = real_step(self, x, y, it, arch)
        if it == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(SupernetTrainer, "step", step_then_signal)
    assert run_main(cmd) == 128 + signal.SIGTERM
    monkeypatch.setattr(SupernetTrainer, "step", real_step)
    state = torch.load(cut, weights_only=True)
    assert state["iter"] == 3 and state["kind"] == "supernet" and not state["finished"]
    assert "stopped by SIGTERM at iteration 3/8" in capsys.readouterr().out

    # Across the epoch boundary (6 iterations per epoch) with --stop-after, then to the end.
    assert run_main([*cmd, "--stop-after", "4"]) == 0
    assert torch.load(cut, weights_only=True)["iter"] == 7
    assert run_main(cmd) == 0
    assert_same(params(full), params(cut))

    # A finished run says so and exits 0; a metrics file sits beside the checkpoint.
    capsys.readouterr()
    assert run_main(cmd) == 0
    assert "already finished (8/8 iterations)" in capsys.readouterr().out
    lines = open(str(tmp_path / "cut" / "checkpoint.metrics.jsonl")).read().splitlines()
    assert any('"event": "finished"' in line for line in lines)

    # The checkpoint carries the agreed supernet format.
    state = torch.load(full, weights_only=True)
    for key in ("state_dict", "config", "iter", "epoch", "optimizer", "scheduler", "sampler",
                "rng", "train_all", "seed", "args", "total_iters"):
        assert key in state, key
    assert not any(k.startswith("module.") for k in state["state_dict"])
    assert state["iter"] == 8 and state["epoch"] == 1 and state["train_all"] is False


def _error(args: list[str], capsys) -> str:
    capsys.readouterr()
    code = run_main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("error: ")
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_bad_inputs_give_one_line_errors(tiny_data, tmp_path, capsys):
    ck = ["--checkpoint", str(tmp_path / "ck.pth.tar"), "--total_iters", "2", *TINY]
    msg = _error(["--train_dir", str(tmp_path / "missing"), *ck], capsys)
    assert "missing does not exist" in msg
    (tmp_path / "empty").mkdir()
    msg = _error(["--train_dir", str(tmp_path / "empty"), *ck], capsys)
    assert "has no class folders" in msg
    (tmp_path / "empty" / "cls").mkdir()
    assert "no images in class folder(s) cls" in _error(["--train_dir", str(tmp_path / "empty"), *ck], capsys)
    assert "is required" in _error(ck, capsys)

    bad = tmp_path / "bad"
    shutil.copytree(os.path.join(tiny_data, "train"), bad)
    (bad / "class_2" / "003.png").write_bytes(b"not a png")
    for workers in ("1", "0"):
        msg = _error([*ck, "--train_dir", str(bad), "--workers", workers, "--total_iters", "6"],
                     capsys)
        assert msg == f"error: cannot read image {bad / 'class_2' / '003.png'}: not an image or corrupt"


def test_mismatched_checkpoints_are_refused(tiny_data, tmp_path, capsys):
    path = str(tmp_path / "ck.pth.tar")
    base = ["--train_dir", os.path.join(tiny_data, "train"), "--workers", "0",
            "--checkpoint", path, *TINY]
    assert run_main([*base, "--total_iters", "1"]) == 0
    msg = _error([*base, "--total_iters", "1", "--width-mult", "0.5"], capsys)
    assert "another search space config (width_mult: 0.25 vs 0.5" in msg
    msg = _error([*base, "--total_iters", "1", "--train-all"], capsys)
    assert "BN-only (BN-NAS) supernet but this run is --train-all" in msg
    msg = _error([*base, "--total_iters", "5"], capsys)
    assert "total_iters: 1 vs 5" in msg
    msg = _error([*base, "--total_iters", "1", "--bn-params", "all"], capsys)
    assert "trained the indicator BNs but this run trains every BN" in msg
    msg = _error([*base, "--total_iters", "1", "--train-all", "--train-classifier"], capsys)
    assert "with --train-all every parameter trains already" in msg
    assert torch.load(path, weights_only=True)["trainable"] == dict(bn_params="indicator",
                                                                    train_classifier=False)
    torch.save(dict(kind="subnet", state_dict={}), path)
    assert "is not a supernet checkpoint of this project (subnet)" in _error(
        [*base, "--total_iters", "1"], capsys)


def _launch(launcher: list[str], out: str, data: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", *launcher, "--standalone", "--nproc_per_node=2", SCRIPT,
           "--train_dir", os.path.join(data, "train"), *TINY, "--total_iters", "3",
           "--workers", "0", "--checkpoint", os.path.join(out, "ck.pth.tar"),
           "--dump-dir", os.path.join(out, "dump")]
    env = run_env()
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=240)


def _check_ranks(out: str) -> dict:
    r0 = torch.load(os.path.join(out, "dump", "rank0.pt"), weights_only=True)
    r1 = torch.load(os.path.join(out, "dump", "rank1.pt"), weights_only=True)
    # Same parameters on both ranks (BN running statistics are per rank by design).
    for k, v in r0["state_dict"].items():
        if not k.endswith(("running_mean", "running_var")):
            assert torch.equal(v, r1["state_dict"][k]), k
    # Disjoint shards: 3 steps x 4 images per rank, no index seen twice.
    seen0 = [i for step in r0["indices"] for i in step]
    seen1 = [i for step in r1["indices"] for i in step]
    assert len(seen0) == len(seen1) == 12
    assert len(set(seen0) | set(seen1)) == 24
    saved = torch.load(os.path.join(out, "ck.pth.tar"), weights_only=True)
    assert saved["iter"] == 3
    assert_same(saved["state_dict"], r0["state_dict"])
    return saved["state_dict"]


@pytest.mark.slow
def test_torchrun_and_legacy_launcher_two_gloo_processes(tiny_data, tmp_path):
    runs = {}
    for name, launcher in (("torchrun", ["torch.distributed.run"]),
                           ("launch", ["torch.distributed.launch"])):
        out = str(tmp_path / name)
        os.makedirs(out)
        proc = _launch(launcher, out, tiny_data)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 processes (gloo)" in proc.stdout
        runs[name] = _check_ranks(out)
    # Both launchers run the same job: the results agree bit for bit.
    assert_same(runs["torchrun"], runs["launch"])


def test_legacy_local_rank_spellings_are_accepted():
    from supernet.main import parse_args
    assert parse_args(["--local_rank=1"]).local_rank == 1
    assert parse_args(["--local-rank", "3"]).local_rank == 3
    args = parse_args(["--train-all"])
    assert (args.epochs, args.batch_size, args.learning_rate, args.min_lr) == (100, 512, 0.25, 5e-4)
    assert parse_args([]).epochs == 10 and parse_args([]).checkpoint == "./checkpoint.pth.tar"
