"""Bad input and diverged training: one line `error: ...`, a non-zero exit, nothing damaged.

One parametrised test runs every script's main(argv) in this process (cheap) on a bad
flag, a bad log or a training run that diverges, and checks: the exit code (2 for bad
input, 3 for a diverged run), exactly one `error:` line and no traceback, and that the
checkpoint / log already on disk is byte-identical afterwards. A second test freezes one
of two gloo processes and checks that the other stops after --dist-timeout, naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import ROOT, run_env
from search_helpers import _tables_env, save_supernet, search_table_dir, tiny_config  # noqa: F401

SPACE = ["--input-size", "32", "--width-mult", "0.25"]
SUPERNET = [*SPACE, "--stem-stride", "2", "--batch_size", "8", "--report_freq", "2",
            "--total_iters", "8", "--workers", "0", "--device", "cpu"]
RETRAIN = [*SPACE, "--stem-stride", "1", "--batch_size", "16", "--workers", "0",
           "--total_iters", "6", "--report_freq", "2", "--device", "cpu"]
HUGE = str(10 ** 30)


def _call(main, argv) -> int:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0 if rc is None else rc


def supernet(argv):
    from supernet.main import main
    return _call(main, argv)


def retrain(argv):
    from retrain.train_from_scratch import main
    return _call(main, argv)


def ea(argv):
    from search.ea import main
    return _call(main, argv)


def eval_log(argv):
    from search.eval import main
    return _call(main, argv)


def run_demo(argv):
    from tools.run_demo import main
    return _call(main, argv)


def ranking_study(argv):
    from tools.ranking_study import main
    before = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        return _call(main, argv)
    finally:
        signal.signal(signal.SIGTERM, before)


def holdout(argv):
    from tools.make_holdout_split import main
    return _call(main, argv)


def flops(argv):
    from utils.flops import main
    return _call(main, argv)


def demo_data(argv):
    from utils.demo_data import main
    return _call(main, argv)


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def good_supernet(tiny_data, tmp_path_factory) -> str:
    """A supernet checkpoint of a sound run stopped after 2 of 8 iterations."""
    path = str(tmp_path_factory.mktemp("good") / "ck.pth.tar")
    torch.set_num_threads(1)
    assert supernet(["--train_dir", os.path.join(tiny_data, "train"), *SUPERNET,
                     "--stop-after", "2", "--checkpoint", path]) == 0
    return path


# ---- the cases ---------------------------------------------------------------------------
# Each builds (runner, argv, files that must stay byte-identical, expected exit code, text
# the error line must contain) in a fresh tmp_path.

def _sup(ctx, *flags, code=2, needle=""):
    ck = ctx.copy_good()
    return supernet, [*ctx.train, *SUPERNET, "--checkpoint", ck, *flags], [ck], code, needle


def _diverging_supernet(ctx, *flags, needle):
    """A run with a finite but absurd LR, stopped after 1 iteration (its checkpoint is
    still sound), then resumed: it diverges, the checkpoint must stay as it was."""
    ck = str(ctx.tmp / "div.pth.tar")
    argv = [*ctx.train, *SUPERNET, "--learning_rate", "1e30", "--checkpoint", ck, *flags]
    assert supernet([*argv, "--stop-after", "1"]) == 0
    return supernet, argv, [ck], 3, needle


def _retrain(ctx, *flags, needle=""):
    data = ["--train_dir", os.path.join(ctx.data, "train"), "--test_dir",
            os.path.join(ctx.data, "val")]
    return retrain, [*data, *RETRAIN, "--save", "run", *flags], [], 2, needle


def _diverging_retrain(ctx):
    save = "run"
    argv = ["--train_dir", os.path.join(ctx.data, "train"), "--test_dir",
            os.path.join(ctx.data, "val"), *RETRAIN, "--eval-freq", "1",
            "--learning_rate", "1e30", "--save", save]
    assert retrain([*argv, "--stop-after", "1"]) == 0
    keep = [f"eval-{save}/checkpoint.pth.tar", f"eval-{save}/best.pth.tar"]
    return retrain, argv, keep, 3, "the loss is nan or inf at iteration 2/6"


def _ea(ctx, *flags, needle=""):
    ck = str(ctx.tmp / "super.pth.tar")
    save_supernet(ck, tiny_config())
    return ea, ["--checkpoint", ck, "--log-dir", str(ctx.tmp / "log"), *flags], [ck], 2, needle


def _ea_diverged_supernet(ctx):
    cfg = tiny_config()
    from utils.spaces import get_space
    space = get_space(cfg)
    gammas = [[0.1] * space.num_ops for _ in range(space.num_layers)]
    gammas[3][1] = float("nan")
    ck = str(ctx.tmp / "super.pth.tar")
    save_supernet(ck, cfg, gammas=gammas)
    return (ea, ["--checkpoint", ck, "--log-dir", str(ctx.tmp / "log")], [ck], 2,
            "BN indicator is not finite")


def _log(ctx, candidates, needle):
    d = ctx.tmp / "log"
    d.mkdir()
    path = d / "ea_results.json"
    cfg = tiny_config().to_dict()
    # json.dumps writes NaN for nan: a log of an older version could hold it.
    path.write_text(json.dumps(dict(config=cfg, candidates=candidates)))
    return eval_log, ["--log-dir", str(d)], [str(path)], 2, needle


ARCH = [3, -1, 0, 4, 0, -1, -1, 0, 4, -1, 4, 4, 1, 4, 2, 0, 0, 4, 0, 2, 2]  # the published one


def _a_file(ctx) -> str:
    path = ctx.tmp / "a_file"
    path.write_text("not a folder\n")
    return str(path)


CASES = {
    # supernet/main.py: every numeric flag refused while parsing
    "supernet lr nan": lambda c: _sup(c, "--learning_rate", "nan", needle="--learning_rate"),
    "supernet lr negative": lambda c: _sup(c, "--learning_rate", "-0.1", needle=">= 0"),
    "supernet min lr inf": lambda c: _sup(c, "--min_lr", "inf", needle="finite"),
    "supernet momentum negative": lambda c: _sup(c, "--momentum", "-0.5", needle="--momentum"),
    "supernet momentum 1": lambda c: _sup(c, "--momentum", "1", needle="[0, 1)"),
    "supernet weight decay negative": lambda c: _sup(c, "--weight_decay", "-1e-5"),
    "supernet label smooth 5": lambda c: _sup(c, "--label_smooth", "5", needle="[0, 1)"),
    "supernet grad clip negative": lambda c: _sup(c, "--grad_clip", "-1", needle="--grad_clip"),
    "supernet width nan": lambda c: _sup(c, "--width-mult", "nan", needle="--width-mult"),
    "supernet width inf": lambda c: _sup(c, "--width-mult", "inf", needle="finite"),
    "supernet width zero": lambda c: _sup(c, "--width-mult", "0", needle="(0, 16]"),
    "supernet input size absurd": lambda c: _sup(c, "--input-size", "100000"),
    "supernet input size zero": lambda c: _sup(c, "--input-size", "0"),
    "supernet classes 1": lambda c: _sup(c, "--classes", "1", needle="--classes"),
    "supernet classes below data": lambda c: _sup(
        c, "--classes", "3", needle="has 4 class folders but --classes is 3"),
    "supernet lighting nan": lambda c: _sup(c, "--lighting", "nan", needle="--lighting"),
    "supernet lighting negative": lambda c: _sup(c, "--lighting", "-0.1"),
    "supernet min scale nan": lambda c: _sup(c, "--min-scale", "nan", needle="--min-scale"),
    "supernet min scale zero": lambda c: _sup(c, "--min-scale", "0"),
    "supernet seed negative": lambda c: _sup(c, "--seed", "-5", needle="[0, 4294967295]"),
    "supernet seed huge": lambda c: _sup(c, "--seed", HUGE, needle="31 digits"),
    "supernet seed not int": lambda c: _sup(c, "--seed", "1.5", needle="expected an integer"),
    "supernet batch zero": lambda c: _sup(c, "--batch_size", "0", needle="--batch_size"),
    "supernet batch absurd": lambda c: _sup(c, "--batch_size", str(10 ** 12)),
    "supernet epochs negative": lambda c: _sup(c, "--epochs", "-1"),
    "supernet total iters zero": lambda c: _sup(c, "--total_iters", "0"),
    "supernet report freq zero": lambda c: _sup(c, "--report_freq", "0"),
    "supernet stop after negative": lambda c: _sup(c, "--stop-after", "-1", needle="--stop-after"),
    "supernet save freq negative": lambda c: _sup(c, "--save-freq", "-3", needle="--save-freq"),
    "supernet workers negative": lambda c: _sup(c, "--workers", "-1", needle="--workers"),
    "supernet dist timeout zero": lambda c: _sup(c, "--dist-timeout", "0", needle="--dist-timeout"),
    "supernet dist timeout nan": lambda c: _sup(c, "--dist-timeout", "nan"),
    # supernet/main.py: training that diverges stops at once; the checkpoint is kept
    "supernet loss nan (train-all, lr 1e30)": lambda c: _diverging_supernet(
        c, "--train-all", needle="the loss is nan or inf at iteration 2/8"),
    "supernet weights inf (BN-only, lr 1e30)": lambda c: _diverging_supernet(
        c, "--save-freq", "1", needle="the weights are nan or inf"),
    # retrain/train_from_scratch.py
    "retrain lr nan": lambda c: _retrain(c, "--learning_rate", "nan", needle="--learning_rate"),
    "retrain lr negative": lambda c: _retrain(c, "--learning_rate", "-1"),
    "retrain momentum negative": lambda c: _retrain(c, "--momentum", "-0.9"),
    "retrain label smooth 5": lambda c: _retrain(c, "--label_smooth", "5"),
    "retrain dropout 1.5": lambda c: _retrain(c, "--dropout", "1.5", needle="--dropout"),
    "retrain seed negative": lambda c: _retrain(c, "--seed", "-5"),
    "retrain seed huge": lambda c: _retrain(c, "--seed", HUGE),
    "retrain grad clip nan": lambda c: _retrain(c, "--grad_clip", "nan"),
    "retrain eval freq zero": lambda c: _retrain(c, "--eval-freq", "0"),
    "retrain width nan": lambda c: _retrain(c, "--width-mult", "nan"),
    "retrain loss nan (lr 1e30)": _diverging_retrain,
    # search/ea.py and search/eval.py
    "ea seed negative": lambda c: _ea(c, "--seed", "-5", needle="--seed"),
    "ea seed huge": lambda c: _ea(c, "--seed", HUGE),
    "ea population absurd": lambda c: _ea(c, "--population-num", str(10 ** 12),
                                          needle="--population-num"),
    "ea population zero": lambda c: _ea(c, "--population-num", "0"),
    "ea crossover absurd": lambda c: _ea(c, "--crossover-num", str(10 ** 9)),
    "ea mutation negative": lambda c: _ea(c, "--mutation-num", "-1"),
    "ea m_prob nan": lambda c: _ea(c, "--m_prob", "nan"),
    "ea max epochs negative": lambda c: _ea(c, "--max-epochs", "-1"),
    "ea topk zero": lambda c: _ea(c, "--topk", "0"),
    "ea diverged supernet": _ea_diverged_supernet,
    "eval arch hello": lambda c: _log(c, [dict(arch="hello", score=1.0, flops=1, params=1)],
                                      "not a list of op indices"),
    "eval score nan": lambda c: _log(c, [dict(arch=ARCH, score=float("nan"), flops=1, params=1)],
                                     "not finite"),
    "eval score inf": lambda c: _log(c, [dict(arch=ARCH, score=float("inf"))], "not finite"),
    "eval topk zero": lambda c: (eval_log, ["--topk", "0"], [], 2, "--topk"),
    # tools and utilities
    "run_demo out names a file": lambda c: (lambda f: (run_demo, ["--out", f, "--quick"], [f], 2,
                                                       "--out"))(_a_file(c)),
    "run_demo seed negative": lambda c: (run_demo, ["--seed", "-1", "--out", str(c.tmp / "d")],
                                         [], 2, "--seed"),
    "run_demo nproc zero": lambda c: (run_demo, ["--nproc", "0"], [], 2, "--nproc"),
    "ranking_study out names a file": lambda c: (lambda f: (
        ranking_study, ["--out", f, "--quick"], [f], 2, "--out"))(_a_file(c)),
    "ranking_study lr nan": lambda c: (ranking_study, ["--bn-lr", "nan"], [], 2, "--bn-lr"),
    "ranking_study width nan": lambda c: (ranking_study, ["--width-mult", "nan"], [], 2, ""),
    "ranking_study seed huge": lambda c: (ranking_study, ["--seed", HUGE], [], 2, "--seed"),
    "ranking_study bootstrap zero": lambda c: (ranking_study, ["--bootstrap", "0"], [], 2, ""),
    "holdout seed huge": lambda c: (holdout, ["--train_dir", c.train[1], "--out",
                                              str(c.tmp / "s"), "--total", "8", "--seed", HUGE],
                                    [], 2, "--seed"),
    "holdout batch zero": lambda c: (holdout, ["--train_dir", c.train[1], "--batch_size", "0"],
                                     [], 2, "--batch_size"),
    "flops width nan": lambda c: (flops, ["--width-mult", "nan", "--build"], [], 2, "finite"),
    "flops input size zero": lambda c: (flops, ["--input-size", "0", "--build"], [], 2, ""),
    "demo_data empty slice path": lambda c: (demo_data, ["--out", str(c.tmp / "t"),
                                                         "--slice-path", ""], [], 2, "empty"),
    "demo_data seed negative": lambda c: (demo_data, ["--out", str(c.tmp / "t"), "--seed", "-1"],
                                          [], 2, "--seed"),
}


class _Ctx:
    def __init__(self, tmp, data, good):
        self.tmp, self.data, self.good = tmp, data, good
        self.train = ["--train_dir", os.path.join(data, "train")]

    def copy_good(self) -> str:
        ck = str(self.tmp / "ck.pth.tar")
        shutil.copy(self.good, ck)
        return ck


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_damages_nothing(case, tiny_data, good_supernet, tmp_path,
                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runner, argv, keep, code, needle = CASES[case](_Ctx(tmp_path, tiny_data, good_supernet))
    before = {p: sha(p) for p in keep}
    capsys.readouterr()
    rc = runner(argv)
    out, err = capsys.readouterr()
    assert rc == code, (case, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err
    errors = [line for line in (out + "\n" + err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, (case, out[-2000:], err[-2000:])
    assert needle in errors[0], (case, errors[0])
    if code == 2:  # refused before doing anything: that line is all there is
        assert err.strip() == errors[0] and out.strip() == "", (case, out, err)
    for path, digest in before.items():
        assert sha(path) == digest, f"{case}: {path} changed"


# ---- a frozen peer ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_frozen_peer_stops_the_job_within_the_timeout_naming_it(tiny_data, tmp_path):
    """Two gloo processes (started as torch.distributed.launch does); rank 1 stops
    answering at iteration 1; rank 0 must give up after --dist-timeout (+ a short grace
    for the other ranks to report) and name rank 1, instead of waiting 30 minutes."""
    timeout = 6
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = run_env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   BNNAS_TEST_FREEZE_RANK="1", BNNAS_TEST_FREEZE_ITER="1")
        cmd = [sys.executable, os.path.join(ROOT, "supernet", "main.py"),
               "--train_dir", os.path.join(tiny_data, "train"), *SUPERNET,
               "--checkpoint", str(tmp_path / "ck.pth.tar"), "--dist-timeout", str(timeout)]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    froze_at: list[float] = []
    err1: list[str] = []

    def watch_rank1() -> None:  # when did rank 1 stop answering?
        for line in procs[1].stderr:
            err1.append(line)
            if "freezing at iteration" in line and not froze_at:
                froze_at.append(time.monotonic())

    watcher = threading.Thread(target=watch_rank1, daemon=True)
    watcher.start()
    try:
        out0, err0 = procs[0].communicate(timeout=150)
        ended_at = time.monotonic()
        assert procs[1].poll() is None  # still frozen: only this test ends it
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        procs[1].wait(timeout=30)
        watcher.join(timeout=30)
    assert procs[0].returncode == 4, err0[-3000:]
    assert froze_at, "".join(err1)[-3000:]
    # the timeout, the grace for the other ranks to report (3 s), and slack for a busy CPU
    assert ended_at - froze_at[0] < timeout + 3 + 20, ended_at - froze_at[0]
    assert "Traceback" not in err0
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err0[-3000:]
    assert errors[0].startswith(f"error: rank 0: a collective operation timed out after "
                                f"{timeout} s"), errors[0]
    assert "rank 1 stopped answering" in errors[0], errors[0]
    assert not os.path.exists(tmp_path / "ck.pth.tar")


# ---- JSON outputs -------------------------------------------------------------------------

def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_json_outputs_never_hold_nan_or_infinity(tmp_path):
    """Non-finite values become null, with a "nonfinite" entry naming them (the policy of
    utils.checkpoint.dumps_json, used by write_json_atomic, MetricsLogger, eval.py --json)."""
    import numpy as np

    from utils.checkpoint import write_json_atomic
    from utils.dist import DistEnv
    from utils.engine import MetricsLogger

    path = tmp_path / "result.json"
    write_json_atomic(dict(a=1.5, b=float("nan"), c=[float("inf"), np.float32(-np.inf)],
                           d=dict(e=torch.tensor(float("nan")), f=np.int64(3))), str(path))
    got = _strict(path.read_text())
    assert got == dict(a=1.5, b=None, c=[None, None], d=dict(e=None, f=3),
                       nonfinite={"b": "nan", "c[0]": "inf", "c[1]": "-inf", "d.e": "nan"})
    write_json_atomic(dict(a=1.0), str(path))
    assert _strict(path.read_text()) == dict(a=1.0)  # nothing added when all is finite

    log = MetricsLogger(str(tmp_path / "m.metrics.jsonl"), DistEnv())
    log.log(3, loss=float("nan"), top1=50.0)
    log.close()
    row = _strict((tmp_path / "m.metrics.jsonl").read_text())
    assert row["loss"] is None and row["top1"] == 50.0 and row["nonfinite"] == {"loss": "nan"}
