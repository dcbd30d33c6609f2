"""Reliability: bad input, damaged or unusable outputs, faults, a frozen peer.

One parametrised test runs every refusal case in this process (cheap): a script's
main(argv) on a bad flag, a bad log, changed or corrupt data, an unusable output path, a
locked or unsafe checkpoint, or a training run that diverges. It checks the exit code (2
for bad input, 3 for a diverged run), exactly one `error:` line and no traceback (for a
refusal that line is all of stderr, and stdout is empty unless the case says otherwise),
and that every file already on disk is byte-identical afterwards (sha256 before and
after). FRESH_CASES build what they need in a fresh tmp_path and name the files that must
not change; WORK_CASES run in one shared work folder (a finished supernet checkpoint, a
finished retrain run, search logs, data variants), all of whose files must not change.

The fault-injection tests use the BNNAS_FAULT hook of utils/checkpoints/io.py (a disk-full
error or a SIGKILL inside a save, a crash between the best.pth.tar and checkpoint.pth.tar
writes or while validating) and check that nothing on disk was lost and that the next run
repairs and cleans up. Another test freezes one of two gloo processes and checks that the
other stops after --dist-timeout, naming it. The rest: the JSON outputs' NaN policy and
an evaluation's classes mapped by name.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, NamedTuple

import pytest
import torch

from conftest import ROOT, run_env
# _tables_env (autouse): every test gets the search tests' FLOPs-table folder, except those
# on the shared work folder, whose `work_env` gives them their own (`tables`).
from search_helpers import _tables_env, save_supernet, search_table_dir, tiny_config  # noqa: F401
from utils import files
from utils.checkpoints.io import load, save_atomic
from utils.files import FaultInjected, write_json_atomic
from utils.cli.common import UserError
from utils.data.identity import label_map
from utils.spaces import get_space, make_config

SPACE = ["--input-size", "32", "--width-mult", "0.25"]
SPACE_R = [*SPACE, "--stem-stride", "1"]
# A supernet / retrain run, its length given where it is used ...
SUPERNET_ARGS = [*SPACE, "--stem-stride", "2", "--batch_size", "8", "--report_freq", "2",
                 "--workers", "0", "--device", "cpu"]
RETRAIN_ARGS = ["--batch_size", "8", "--workers", "0", "--report_freq", "2",
                "--learning_rate", "0.1", "--device", "cpu", *SPACE_R]
# ... and runs of a fixed length: 8 supernet iterations, 6 retrain iterations of batch 16.
SUPERNET_8 = [*SPACE, "--stem-stride", "2", "--batch_size", "8", "--report_freq", "2",
              "--total_iters", "8", "--workers", "0", "--device", "cpu"]
RETRAIN_6 = [*SPACE, "--stem-stride", "1", "--batch_size", "16", "--workers", "0",
             "--total_iters", "6", "--report_freq", "2", "--device", "cpu"]
CFG_R = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)
HUGE = str(10 ** 30)
ARCH = [3, -1, 0, 4, 0, -1, -1, 0, 4, -1, 4, 4, 1, 4, 2, 0, 0, 4, 0, 2, 2]  # the published one


# ---- running a script's main() in this process -----------------------------------------

SCRIPTS = dict(supernet="supernet.main", retrain="retrain.train_from_scratch",
               ea="search.ea", eval="search.eval", demo="tools.run_demo",
               ranking="tools.ranking_study", holdout="tools.make_holdout_split",
               flops="tools.flops", demo_data="tools.demo_data")


def script(name: str):
    return importlib.import_module(SCRIPTS[name])


def call(name: str, argv: list[str]) -> int:
    """main(argv) of script `name`; its exit code as the process would have it."""
    main = script(name).main
    before = signal.getsignal(signal.SIGTERM)  # tools/ranking_study.py installs its own
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        signal.signal(signal.SIGTERM, before)
    return 0 if rc is None else rc


def run(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = call(name, argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(paths: list[str]) -> dict[str, str]:
    """sha256 of every file named and of every file under every folder named."""
    out = {}
    for path in paths:
        if os.path.isdir(path):
            for folder, _, files in os.walk(path):
                for name in files:
                    out[os.path.join(folder, name)] = _sha(os.path.join(folder, name))
        else:
            out[path] = _sha(path)  # (a file that must stay, so it must be there)
    return out


def _live_lock(path: str) -> None:
    with open(path, "w") as f:
        json.dump(dict(pid=1, host=os.uname().nodename, since="2026-01-01 00:00:00"), f)


def _copy_data(src: str, dst: str, add_image: bool = False, rename: str | None = None) -> str:
    shutil.copytree(src, dst)
    if add_image:
        shutil.copy(os.path.join(dst, "class_1", "000.png"), os.path.join(dst, "class_1", "999.png"))
    if rename:
        os.rename(os.path.join(dst, "class_3"), os.path.join(dst, rename))
    return dst


class Evil:  # pickled by reference: a safe load must refuse it, naming it
    pass


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("rel_tables"))


@pytest.fixture
def work_env(_tables_env, tables, monkeypatch):
    """The tests on the work folder: its table folder (after _tables_env, so it wins), no
    fault injected unless the test asks, the fault hook's counts reset."""
    monkeypatch.setenv("BNNAS_TABLE_DIR", tables)
    monkeypatch.delenv("BNNAS_FAULT", raising=False)
    files._FAULT_COUNTS.clear()  # (the fault hook lives in utils/files.py)


@pytest.fixture(scope="module")
def good_supernet(tiny_data, tmp_path_factory) -> str:
    """A supernet checkpoint of a sound run stopped after 2 of 8 iterations."""
    path = str(tmp_path_factory.mktemp("good") / "ck.pth.tar")
    torch.set_num_threads(1)
    assert call("supernet", ["--train_dir", os.path.join(tiny_data, "train"), *SUPERNET_8,
                             "--stop-after", "2", "--checkpoint", path]) == 0
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data, tables):
    """A work folder: a finished supernet checkpoint, a finished retrain run (eval-r/),
    search logs, data variants; a table folder outside it (built tables are no outputs)."""
    root = tmp_path_factory.mktemp("rel_work")
    d = str(root)
    old_cwd, old_tables = os.getcwd(), os.environ.get("BNNAS_TABLE_DIR")
    os.chdir(d)
    os.environ["BNNAS_TABLE_DIR"] = tables
    try:
        train, val = os.path.join(tiny_data, "train"), os.path.join(tiny_data, "val")
        sup = os.path.join(d, "sup", "ck.pth.tar")
        assert call("supernet", ["--train_dir", train, *SUPERNET_ARGS, "--total_iters", "1",
                                 "--checkpoint", sup]) == 0
        assert call("retrain", ["--train_dir", train, "--test_dir", val, *RETRAIN_ARGS,
                                "--total_iters", "2", "--eval-freq", "2", "--save", "r"]) == 0
        _copy_data(train, os.path.join(d, "data", "train_plus1"), add_image=True)
        _copy_data(train, os.path.join(d, "data", "train_renamed"), rename="class_9")
        _copy_data(val, os.path.join(d, "data", "val_unknown"), rename="zebra")
        sub = os.path.join(d, "data", "val_subset")
        for c in ("class_1", "class_3"):
            shutil.copytree(os.path.join(val, c), os.path.join(sub, c))
        corrupt = _copy_data(val, os.path.join(d, "data", "val_corrupt"))
        with open(os.path.join(corrupt, "class_2", "001.png"), "wb") as f:
            f.write(b"not a png")
        # A checkpoint of the original's kind of ours (no class names) and an unsafe one.
        best = load("eval-r/best.pth.tar")
        best.pop("classes")
        save_atomic(best, os.path.join(d, "noname.pth.tar"))
        torch.save(dict(kind="supernet", evil=Evil()), os.path.join(d, "evil.pth.tar"))
        # Search logs: one whose best architecture is over its own FLOPs limit, one with a
        # malformed entry; a wrong FLOPs table in a folder given explicitly.
        from utils.flops.table import FlopsTable, load_table, table_path
        space = get_space(CFG_R)
        from utils.checkpoints.subnet import published_arch
        arch = space.parse(published_arch("mobilenet"))
        flops = load_table(CFG_R).flops_of(arch)
        cand = dict(arch=list(arch), score=1.0, flops=flops, params=1, generation=0)
        write_json_atomic(dict(config=CFG_R.to_dict(), candidates=[cand], flops_limit=flops - 1,
                               score_kind="indicator"), os.path.join(d, "log_over", "ea_results.json"))
        bad = dict(cand, arch=[0, 1, 2])
        write_json_atomic(dict(config=CFG_R.to_dict(), candidates=[cand, bad],
                               score_kind="indicator"), os.path.join(d, "log_bad", "ea_results.json"))
        t = FlopsTable.build(space).to_json()
        for layer in t["layers"]:
            layer["flops"] = [1] * len(layer["flops"])
        t.pop("sha256")
        write_json_atomic(t, table_path(CFG_R, os.path.join(d, "bad_tables")))
        os.makedirs(os.path.join(d, "a_folder"))
        with open(os.path.join(d, "a_file"), "w") as f:
            f.write("x")
        with open(os.path.join(d, "eval-f"), "w") as f:
            f.write("x")
        # A log folder for the lock case (locks are written per case: they would block
        # the other cases).
        os.makedirs(os.path.join(d, "locked_log"))
        yield dict(dir=d, train=train, val=val, sup=sup, arch=space.format(arch))
    finally:
        os.chdir(old_cwd)
        if old_tables is None:
            os.environ.pop("BNNAS_TABLE_DIR", None)
        else:
            os.environ["BNNAS_TABLE_DIR"] = old_tables


# ---- the refusal cases ---------------------------------------------------------------------

class Case(NamedTuple):
    script: str                # a key of SCRIPTS
    argv: list[str]
    keep: list[str]            # files, and folders (every file under them), left byte-identical
    code: int = 2              # 2: bad input, refused before doing anything; 3: diverged
    needle: str = ""           # text the error line must contain
    lock: str | None = None    # a live run's lock file (PID 1 is always alive) to write first
    fault: str | None = None   # BNNAS_FAULT while the script runs
    quiet: bool = True         # a refusal prints nothing on stdout either


# FRESH_CASES: each builds its Case in a fresh tmp_path (the current folder) from a _Fresh.

class _Fresh:
    def __init__(self, tmp, data, good):
        self.tmp, self.data, self.good = tmp, data, good
        self.train = ["--train_dir", os.path.join(data, "train")]

    def copy_good(self) -> str:
        ck = str(self.tmp / "ck.pth.tar")
        shutil.copy(self.good, ck)
        return ck


def _sup(ctx, *flags, code=2, needle=""):
    ck = ctx.copy_good()
    return Case("supernet", [*ctx.train, *SUPERNET_8, "--checkpoint", ck, *flags], [ck], code,
                needle)


def _diverging_supernet(ctx, *flags, needle):
    """A run with a finite but absurd LR, stopped after 1 iteration (its checkpoint is
    still sound), then resumed: it diverges, the checkpoint must stay as it was."""
    ck = str(ctx.tmp / "div.pth.tar")
    argv = [*ctx.train, *SUPERNET_8, "--learning_rate", "1e30", "--checkpoint", ck, *flags]
    assert call("supernet", [*argv, "--stop-after", "1"]) == 0
    return Case("supernet", argv, [ck], 3, needle)


def _retrain(ctx, *flags, needle=""):
    data = ["--train_dir", os.path.join(ctx.data, "train"), "--test_dir",
            os.path.join(ctx.data, "val")]
    return Case("retrain", [*data, *RETRAIN_6, "--save", "run", *flags], [], 2, needle)


def _diverging_retrain(ctx):
    save = "run"
    argv = ["--train_dir", os.path.join(ctx.data, "train"), "--test_dir",
            os.path.join(ctx.data, "val"), *RETRAIN_6, "--eval-freq", "1",
            "--learning_rate", "1e30", "--save", save]
    assert call("retrain", [*argv, "--stop-after", "1"]) == 0
    keep = [f"eval-{save}/checkpoint.pth.tar", f"eval-{save}/best.pth.tar"]
    return Case("retrain", argv, keep, 3, "the loss is nan or inf at iteration 2/6")


def _ea(ctx, *flags, needle=""):
    ck = str(ctx.tmp / "super.pth.tar")
    save_supernet(ck, tiny_config())
    return Case("ea", ["--checkpoint", ck, "--log-dir", str(ctx.tmp / "log"), *flags], [ck], 2,
                needle)


def _ea_diverged_supernet(ctx):
    cfg = tiny_config()
    space = get_space(cfg)
    gammas = [[0.1] * space.num_ops for _ in range(space.num_layers)]
    gammas[3][1] = float("nan")
    ck = str(ctx.tmp / "super.pth.tar")
    save_supernet(ck, cfg, gammas=gammas)
    return Case("ea", ["--checkpoint", ck, "--log-dir", str(ctx.tmp / "log")], [ck], 2,
                "BN indicator is not finite")


def _log(ctx, candidates, needle):
    d = ctx.tmp / "log"
    d.mkdir()
    path = d / "ea_results.json"
    cfg = tiny_config().to_dict()
    # json.dumps writes NaN for nan: a log of an older version could hold it.
    path.write_text(json.dumps(dict(config=cfg, candidates=candidates)))
    return Case("eval", ["--log-dir", str(d)], [str(path)], 2, needle)


def _a_file(ctx) -> str:
    path = ctx.tmp / "a_file"
    path.write_text("not a folder\n")
    return str(path)


FRESH_CASES: dict[str, Callable[[_Fresh], Case]] = {
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
    "eval topk zero": lambda c: Case("eval", ["--topk", "0"], [], 2, "--topk"),
    # tools and utilities
    "run_demo out names a file": lambda c: (lambda f: Case("demo", ["--out", f, "--quick"], [f],
                                                           2, "--out"))(_a_file(c)),
    "run_demo seed negative": lambda c: Case("demo", ["--seed", "-1", "--out", str(c.tmp / "d")],
                                             [], 2, "--seed"),
    "run_demo nproc zero": lambda c: Case("demo", ["--nproc", "0"], [], 2, "--nproc"),
    "ranking_study out names a file": lambda c: (lambda f: Case(
        "ranking", ["--out", f, "--quick"], [f], 2, "--out"))(_a_file(c)),
    "ranking_study lr nan": lambda c: Case("ranking", ["--bn-lr", "nan"], [], 2, "--bn-lr"),
    "ranking_study width nan": lambda c: Case("ranking", ["--width-mult", "nan"], [], 2, ""),
    "ranking_study seed huge": lambda c: Case("ranking", ["--seed", HUGE], [], 2, "--seed"),
    "ranking_study bootstrap zero": lambda c: Case("ranking", ["--bootstrap", "0"], [], 2, ""),
    "holdout seed huge": lambda c: Case("holdout", ["--train_dir", c.train[1], "--out",
                                                    str(c.tmp / "s"), "--total", "8",
                                                    "--seed", HUGE], [], 2, "--seed"),
    "holdout batch zero": lambda c: Case("holdout", ["--train_dir", c.train[1],
                                                     "--batch_size", "0"], [], 2, "--batch_size"),
    "flops width nan": lambda c: Case("flops", ["--width-mult", "nan", "--build"], [], 2,
                                      "finite"),
    "flops input size zero": lambda c: Case("flops", ["--input-size", "0", "--build"], [], 2, ""),
    "demo_data empty slice path": lambda c: Case("demo_data", ["--out", str(c.tmp / "t"),
                                                               "--slice-path", ""], [], 2, "empty"),
    "demo_data seed negative": lambda c: Case("demo_data", ["--out", str(c.tmp / "t"),
                                                            "--seed", "-1"], [], 2, "--seed"),
}


# WORK_CASES: each builds its Case in the shared work folder (the current folder) from a
# _Work; every file in that folder must stay as it was (stderr is the error line; stdout
# may hold what the script printed before refusing).

class _Work:
    def __init__(self, w: dict):
        self.dir, self.train, self.val, self.sup, self.arch = (
            w["dir"], w["train"], w["val"], w["sup"], w["arch"])
        self.data = ["--train_dir", self.train, "--test_dir", self.val]
        self.sup_cmd = ["--train_dir", self.train, *SUPERNET_ARGS, "--total_iters", "1"]
        self.ret_cmd = [*self.data, *RETRAIN_ARGS, "--total_iters", "2", "--eval-freq", "2"]

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def case(self, script_name, argv, needle, lock=None, fault=None) -> Case:
        # stdout is not checked here: --eval prints the architecture it loaded first
        return Case(script_name, argv, [self.dir], 2, needle, lock, fault, quiet=False)


WORK_CASES: dict[str, Callable[[_Work], Case]] = {
    "supernet-empty-checkpoint": lambda w: w.case(
        "supernet", [*w.sup_cmd, "--checkpoint", ""], "--checkpoint is empty"),
    "supernet-checkpoint-is-folder": lambda w: w.case(
        "supernet", [*w.sup_cmd, "--checkpoint", w.path("a_folder")],
        "is a folder; give a file path"),
    "supernet-under-a-file": lambda w: w.case(
        "supernet", [*w.sup_cmd, "--checkpoint", w.path("a_file", "c.pth")],
        "a_file is a file, not a folder"),
    "supernet-read-only-fs": lambda w: w.case(
        "supernet", [*w.sup_cmd, "--checkpoint", w.path("new", "c.pth")],
        "Read-only file system", fault="probe-erofs"),
    "supernet-locked": lambda w: w.case(
        "supernet", [*w.sup_cmd, "--checkpoint", w.sup],
        "is in use by another run (PID 1 on host", lock=w.sup + ".lock"),
    "supernet-data-changed": lambda w: w.case(
        "supernet", ["--train_dir", w.path("data", "train_plus1"), *SUPERNET_ARGS,
                     "--total_iters", "1", "--checkpoint", w.sup],
        "--train_dir is not the data checkpoint"),
    "supernet-other-classes": lambda w: w.case(
        "supernet", ["--train_dir", w.path("data", "train_renamed"), *SUPERNET_ARGS,
                     "--total_iters", "1", "--checkpoint", w.sup],
        "has other classes than checkpoint"),
    "supernet-unsafe-pickle": lambda w: w.case(
        "supernet", [*w.sup_cmd, "--checkpoint", w.path("evil.pth.tar")], "Evil"),
    "retrain-save-is-a-file": lambda w: w.case(
        "retrain", [*w.ret_cmd, "--save", "f"], "the --save folder eval-f is a file"),
    "retrain-empty-save": lambda w: w.case(
        "retrain", [*w.ret_cmd, "--save", ""], "--save is empty"),
    "retrain-locked": lambda w: w.case(
        "retrain", [*w.ret_cmd, "--save", "r"], "eval-r is in use by another run (PID 1",
        lock=w.path("eval-r", ".lock")),
    "retrain-data-changed": lambda w: w.case(
        "retrain", ["--train_dir", w.path("data", "train_plus1"), "--test_dir", w.val,
                    *RETRAIN_ARGS, "--total_iters", "2", "--eval-freq", "2", "--save", "r"],
        "48 vs 49 images"),
    "retrain-corrupt-val-image": lambda w: w.case(
        "retrain", ["--train_dir", w.train, "--test_dir", w.path("data", "val_corrupt"),
                    *RETRAIN_ARGS, "--total_iters", "2", "--save", "c"],
        "001.png: not an image or corrupt (--test_dir, checked before training)"),
    "retrain-arch-over-log-limit": lambda w: w.case(
        "retrain", [*w.ret_cmd, "--arch-from", w.path("log_over"), "--save", "o"],
        "over the log's limit"),
    "eval-unknown-class": lambda w: w.case(
        "retrain", ["--eval", "--eval-resume", "eval-r/best.pth.tar", "--test_dir",
                    w.path("data", "val_unknown"), "--workers", "0", "--device", "cpu"],
        "class folder 'zebra' that eval-r/best.pth.tar was not trained on"),
    "eval-no-names-other-count": lambda w: w.case(
        "retrain", ["--eval", "--eval-resume", w.path("noname.pth.tar"), "--test_dir",
                    w.path("data", "val_subset"), "--workers", "0", "--device", "cpu"],
        "does not record its class names, so --test_dir must have exactly its 4 classes"),
    "search-eval-malformed-entry": lambda w: w.case(
        "eval", ["--log-dir", w.path("log_bad")],
        "candidate 1 is not an architecture of its space"),
    "ea-log-dir-is-a-file": lambda w: w.case(
        "ea", ["--checkpoint", w.sup, "--log-dir", w.path("a_file")], "--log-dir"),
    "ea-locked": lambda w: w.case(
        "ea", ["--checkpoint", w.sup, "--log-dir", w.path("locked_log")],
        "is in use by another run (PID 1", lock=w.path("locked_log", ".lock")),
    "demo-out-is-a-file": lambda w: w.case("demo", ["--quick", "--out", w.path("a_file")],
                                           "--out"),
    "ranking-out-is-a-file": lambda w: w.case("ranking", ["--quick", "--out", w.path("a_file")],
                                              "--out"),
    "holdout-out-is-a-file": lambda w: w.case(
        "holdout", ["--train_dir", w.train, "--out", w.path("a_file"), "--per-class", "1"],
        "--out"),
    "flops-wrong-explicit-table": lambda w: w.case(
        "flops", ["--table-dir", w.path("bad_tables"), "--arch", w.arch, *SPACE_R,
                  "--classes", "4"], "is not the table of"),
}

assert not set(FRESH_CASES) & set(WORK_CASES)


@pytest.mark.parametrize("case", [*FRESH_CASES, *WORK_CASES])
def test_bad_input_is_one_line_and_damages_nothing(case, tiny_data, good_supernet, work, request,
                                                   tmp_path, monkeypatch, capsys):
    if case in FRESH_CASES:
        monkeypatch.chdir(tmp_path)
        c = FRESH_CASES[case](_Fresh(tmp_path, tiny_data, good_supernet))
    else:
        request.getfixturevalue("work_env")
        monkeypatch.chdir(work["dir"])
        c = WORK_CASES[case](_Work(work))
    if c.lock:
        _live_lock(c.lock)
    before = snapshot(c.keep)
    if c.fault:
        monkeypatch.setenv("BNNAS_FAULT", c.fault)
    try:
        rc, out, err = run(c.script, c.argv, capsys)
    finally:
        after = snapshot(c.keep)
        if c.lock and os.path.exists(c.lock):  # it would block the other cases
            os.unlink(c.lock)
    assert rc == c.code, (case, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err
    errors = [line for line in (out + "\n" + err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, (case, out[-2000:], err[-2000:])
    assert c.needle in errors[0], (case, errors[0])
    if c.code == 2:  # refused before doing anything: that line is all of stderr
        assert errors[0].startswith("error: ") and err.strip() == errors[0], (case, err)
        if c.quiet:
            assert out.strip() == "", (case, out)
    assert after == before, (case, sorted(set(after.items()) ^ set(before.items())))


# ---- fault injection -----------------------------------------------------------------------

def _metric_steps(path: str, key: str) -> list[int]:
    with open(path) as f:
        return [r["step"] for r in map(json.loads, f) if key in r]


def _temps(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if files.TMP_MARK in n]


@pytest.mark.usefixtures("work_env")
def test_disk_full_during_a_save_is_one_line_and_loses_nothing(tiny_data, tmp_path, capsys,
                                                               monkeypatch):
    path = str(tmp_path / "ck.pth.tar")
    cmd = ["--train_dir", os.path.join(tiny_data, "train"), *SUPERNET_ARGS, "--total_iters", "4",
           "--save-freq", "1", "--checkpoint", path]
    monkeypatch.setenv("BNNAS_FAULT", "save-enospc@2")  # the second save: iteration 2
    rc, out, err = run("supernet", cmd, capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == lines[0]  # (above it: the progress bar)
    assert lines[0] == (f"error: cannot write {path}: No space left on device (ENOSPC); "
                        f"the previous file is unchanged")
    assert load(path)["iter"] == 1  # the checkpoint before the failed save is intact
    assert not _temps(str(tmp_path)) and not os.path.exists(path + ".lock")
    monkeypatch.delenv("BNNAS_FAULT")
    rc, out, err = run("supernet", cmd, capsys)
    assert rc == 0, err
    assert "resuming from" in out and load(path)["iter"] == 4
    steps = _metric_steps(str(tmp_path / "ck.metrics.jsonl"), "loss")
    assert steps == sorted(set(steps)) == [2, 4]  # the row of iteration 2 is not doubled


@pytest.mark.usefixtures("work_env")
def test_kill_during_a_save_leaves_a_temp_file_and_a_stale_lock_that_the_next_run_removes(
        tiny_data, tmp_path, capsys):
    path = str(tmp_path / "ck.pth.tar")
    cmd = ["--train_dir", os.path.join(tiny_data, "train"), *SUPERNET_ARGS, "--total_iters", "4",
           "--save-freq", "1", "--checkpoint", path]
    env = run_env()
    env["BNNAS_FAULT"] = "save-kill@2"
    env["BNNAS_TABLE_DIR"] = str(tmp_path / "tables")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "supernet", "main.py"), *cmd],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(_temps(str(tmp_path))) == 1 and os.path.exists(path + ".lock")
    assert load(path)["iter"] == 1
    assert 2 in _metric_steps(str(tmp_path / "ck.metrics.jsonl"), "loss")  # logged, not saved
    rc, out, err = run("supernet", cmd, capsys)
    assert rc == 0, err
    assert "removed 1 temp file(s) left by an interrupted save" in err
    assert "taking over the lock" in err and "no longer running" in err
    assert "dropped 1 row(s)" in err
    assert not _temps(str(tmp_path)) and not os.path.exists(path + ".lock")
    assert load(path)["iter"] == 4
    assert _metric_steps(str(tmp_path / "ck.metrics.jsonl"), "loss") == [2, 4]


@pytest.fixture(scope="module")
def reference_retrain(tmp_path_factory, tiny_data, tables):
    """An uninterrupted 6-iteration retrain (validations at 3 and 6) to compare with."""
    d = tmp_path_factory.mktemp("rel_ref")
    old, old_tables = os.getcwd(), os.environ.get("BNNAS_TABLE_DIR")
    os.chdir(d)
    os.environ["BNNAS_TABLE_DIR"] = tables
    try:
        data = ["--train_dir", os.path.join(tiny_data, "train"),
                "--test_dir", os.path.join(tiny_data, "val")]
        cmd = [*data, *RETRAIN_ARGS, "--total_iters", "6", "--eval-freq", "3"]
        assert call("retrain", [*cmd, "--save", "ref"]) == 0
        yield dict(cmd=cmd, final=load(str(d / "eval-ref" / "checkpoint.pth.tar")),
                   result=json.load(open(d / "eval-ref" / "result.json")))
    finally:
        os.chdir(old)
        if old_tables is None:
            os.environ.pop("BNNAS_TABLE_DIR", None)
        else:
            os.environ["BNNAS_TABLE_DIR"] = old_tables


def _same_run(a: dict, b: dict) -> None:
    assert a["iters"] == b["iters"] and a["best_acc_top1"] == b["best_acc_top1"]
    for k, v in b["state_dict"].items():
        assert torch.equal(a["state_dict"][k], v), k


@pytest.mark.usefixtures("work_env")
@pytest.mark.parametrize("fault", ["retrain-after-best", "retrain-validate"])
def test_retrain_crash_at_a_validation_point_is_repaired(fault, reference_retrain, tmp_path,
                                                         capsys, monkeypatch):
    """A crash between the best.pth.tar and checkpoint.pth.tar writes, or while validating
    (the checkpoint is saved BEFORE validating): the rerun repairs, validates what was not
    validated, logs every metrics row once and ends as the uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    cmd = [*reference_retrain["cmd"], "--save", "x"]
    monkeypatch.setenv("BNNAS_FAULT", fault)
    with pytest.raises(FaultInjected):
        run("retrain", cmd, capsys)
    first = load("eval-x/checkpoint.pth.tar")
    assert first["iters"] == 3 and first["eval_pending"]  # the training work was kept
    assert os.path.exists("eval-x/best.pth.tar") == (fault == "retrain-after-best")
    assert not os.path.exists("eval-x/.lock") and not _temps("eval-x")
    monkeypatch.delenv("BNNAS_FAULT")
    rc, out, err = run("retrain", cmd, capsys)
    assert rc == 0, err
    assert "validating iteration 3 first" in out
    if fault == "retrain-after-best":
        assert "continuing with what eval-x/best.pth.tar holds" in out
    assert _metric_steps("eval-x/metrics.jsonl", "valid_acc_top1") == [3, 6]
    final, best = load("eval-x/checkpoint.pth.tar"), load("eval-x/best.pth.tar")
    _same_run(final, reference_retrain["final"])
    result = json.load(open("eval-x/result.json"))
    assert result["best_iters"] == best["iters"] == final["best_iters"]
    assert result["best_acc_top1"] == best["best_acc_top1"]
    assert result == {**reference_retrain["result"], "train_time": result["train_time"]}


@pytest.mark.usefixtures("work_env")
def test_stale_best_is_rewritten_from_the_checkpoint_and_result_json_fixed(
        reference_retrain, tmp_path, capsys, monkeypatch):
    """The old write order's crash: checkpoint.pth.tar records itself as the best, but
    best.pth.tar holds an older iteration and result.json follows it."""
    monkeypatch.chdir(tmp_path)
    cmd = [*reference_retrain["cmd"], "--save", "y"]
    assert run("retrain", [*cmd, "--stop-after", "3"], capsys)[0] == 0
    old_best = load("eval-y/best.pth.tar")
    assert old_best["iters"] == 3
    assert run("retrain", cmd, capsys)[0] == 0
    final = load("eval-y/checkpoint.pth.tar")
    final.update(best_iters=6, best_acc_top1=final["last_eval"]["top1"],
                 best_acc_top5=final["last_eval"]["top5"])
    save_atomic(final, "eval-y/checkpoint.pth.tar")
    save_atomic(old_best, "eval-y/best.pth.tar")
    rc, out, err = run("retrain", cmd, capsys)
    assert rc == 0, err
    assert "rewrote it from the checkpoint" in out and "corrected eval-y/result.json" in out
    best = load("eval-y/best.pth.tar")
    assert best["iters"] == 6
    result = json.load(open("eval-y/result.json"))
    assert result["best_iters"] == 6 and result["best_acc_top1"] == final["best_acc_top1"]


# ---- a frozen peer -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
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
               "--train_dir", os.path.join(tiny_data, "train"), *SUPERNET_8,
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


# ---- JSON outputs --------------------------------------------------------------------------

def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_json_outputs_never_hold_nan_or_infinity(tmp_path):
    """Non-finite values become null, with a "nonfinite" entry naming them (the policy of
    utils.files.dumps_json, used by write_json_atomic, MetricsLogger, eval.py --json)."""
    import numpy as np

    from utils.dist import DistEnv
    from utils.train.meters import MetricsLogger

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


# ---- classes by name -----------------------------------------------------------------------

@pytest.mark.usefixtures("work_env")
def test_eval_maps_a_subset_of_the_classes_by_name(work, capsys, monkeypatch):
    monkeypatch.chdir(work["dir"])
    base = ["--eval", "--eval-resume", "eval-r/best.pth.tar", "--workers", "0", "--device", "cpu"]
    counts = {}
    for name, folder in (("full", work["val"]), ("subset", os.path.join("data", "val_subset"))):
        rc, out, err = run("retrain", [*base, "--test_dir", folder], capsys)
        assert rc == 0, err
        counts[name] = out
    # The subset holds class_1 and class_3: labelled 1 and 3 (the checkpoint's outputs),
    # not 0 and 1 as their position in the folder would say.
    from utils.data.loaders import build_val_loader
    ds_full = build_val_loader(work["val"], 32, 8, _cpu_env(), 0)
    assert ds_full.classes == ["class_0", "class_1", "class_2", "class_3"]
    sub = build_val_loader(os.path.join(work["dir"], "data", "val_subset"), 32, 8,
                           _cpu_env(), 0, classes=4)
    sub.relabel(label_map(sub.classes, ds_full.classes, 4, "--test_dir", "x"))
    assert sorted({y for _, y in sub.dataset.samples}) == [1, 3]
    assert "(" in counts["subset"] and "/10 correct)" in counts["subset"]


def _cpu_env():
    from utils.dist import DistEnv
    return DistEnv()


@pytest.mark.usefixtures("work_env")
def test_label_map_rules():
    names = ["a", "b", "c"]
    assert label_map(["a", "b", "c"], names, 3, "--test_dir", "ck") is None
    assert label_map(["b", "c"], names, 3, "--test_dir", "ck") == [1, 2]
    with pytest.raises(UserError, match="class folder 'z' that ck was not trained on"):
        label_map(["a", "z"], names, 3, "--test_dir", "ck")
    assert label_map(["x", "y"], None, 2, "--test_dir", "ck") is None
    with pytest.raises(UserError, match="exactly its 3 classes"):
        label_map(["x", "y"], None, 3, "--test_dir", "ck")
