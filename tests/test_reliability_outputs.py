"""Outputs, checkpoints, resume, locks and derived files: refusals and fault injection.

One parametrised test runs every refusal case in-process: exit code 2, exactly one
`error:` line, no traceback, and every file already on disk unchanged (sha256 of the
whole work folder before and after). The fault-injection tests use the BNNAS_FAULT hook
of utils/checkpoint.py (a disk-full error or a SIGKILL inside a save, a crash between
the best.pth.tar and checkpoint.pth.tar writes or while validating) and check that
nothing on disk was lost and that the next run repairs and cleans up.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_env
from utils import checkpoint as ckpt
from utils.checkpoint import FaultInjected, load, save_atomic, write_json_atomic
from utils.cli import UserError
from utils.data_identity import label_map
from utils.spaces import get_space, make_config


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RETRAIN = _load("rel_retrain", "retrain/train_from_scratch.py")
EA = _load("rel_ea", "search/ea.py")
EVAL = _load("rel_eval", "search/eval.py")
DEMO = _load("rel_demo", "tools/run_demo.py")
RANKING = _load("rel_ranking", "tools/ranking_study.py")
HOLDOUT = _load("rel_holdout", "tools/make_holdout_split.py")

SUP = ["--input-size", "32", "--width-mult", "0.25", "--stem-stride", "2", "--batch_size", "8",
       "--report_freq", "2", "--workers", "0", "--device", "cpu"]
SPACE_R = ["--input-size", "32", "--width-mult", "0.25", "--stem-stride", "1"]
RET = ["--batch_size", "8", "--workers", "0", "--report_freq", "2", "--learning_rate", "0.1",
       "--device", "cpu", *SPACE_R]
CFG_R = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)


class Evil:  # pickled by reference: a safe load must refuse it, naming it
    pass


def _main_of(script: str):
    if script == "supernet":
        from supernet.main import main
        return main
    if script == "flops":
        from utils.flops import main
        return main
    return dict(retrain=RETRAIN.main, ea=EA.main, eval=EVAL.main, demo=DEMO.main,
                ranking=RANKING.main, holdout=HOLDOUT.main)[script]


def run(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = _main_of(script)(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return (0 if rc is None else rc), out, err


def snapshot(root: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _copy_data(src: str, dst: str, add_image: bool = False, rename: str | None = None) -> str:
    shutil.copytree(src, dst)
    if add_image:
        shutil.copy(os.path.join(dst, "class_1", "000.png"), os.path.join(dst, "class_1", "999.png"))
    if rename:
        os.rename(os.path.join(dst, "class_3"), os.path.join(dst, rename))
    return dst


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("rel_tables"))


@pytest.fixture(autouse=True)
def _env(tables, monkeypatch):
    monkeypatch.setenv("BNNAS_TABLE_DIR", tables)
    monkeypatch.delenv("BNNAS_FAULT", raising=False)
    ckpt._FAULT_COUNTS.clear()


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
        from supernet.main import main as sup_main
        sup = os.path.join(d, "sup", "ck.pth.tar")
        assert sup_main(["--train_dir", train, *SUP, "--total_iters", "1",
                         "--checkpoint", sup]) == 0
        assert RETRAIN.main(["--train_dir", train, "--test_dir", val, *RET, "--total_iters", "2",
                             "--eval-freq", "2", "--save", "r"]) == 0
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
        from utils.flops import FlopsTable, load_table, table_path
        space = get_space(CFG_R)
        arch = space.parse(RETRAIN.published_arch("mobilenet"))
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


def _live_lock(path: str) -> None:
    with open(path, "w") as f:
        json.dump(dict(pid=1, host=os.uname().nodename, since="2026-01-01 00:00:00"), f)


def _cases(w: dict) -> dict[str, tuple]:
    """id -> (script, argv, needle in the error line, setup or None, env or None)."""
    d, train, val, sup = w["dir"], w["train"], w["val"], w["sup"]
    data = ["--train_dir", train, "--test_dir", val]
    sup_cmd = ["--train_dir", train, *SUP, "--total_iters", "1"]
    ret_cmd = [*data, *RET, "--total_iters", "2", "--eval-freq", "2"]
    j = os.path.join
    return {
        "supernet-empty-checkpoint": ("supernet", [*sup_cmd, "--checkpoint", ""],
                                      "--checkpoint is empty", None, None),
        "supernet-checkpoint-is-folder": ("supernet", [*sup_cmd, "--checkpoint", j(d, "a_folder")],
                                          "is a folder; give a file path", None, None),
        "supernet-under-a-file": ("supernet", [*sup_cmd, "--checkpoint", j(d, "a_file", "c.pth")],
                                  "a_file is a file, not a folder", None, None),
        "supernet-read-only-fs": ("supernet", [*sup_cmd, "--checkpoint", j(d, "new", "c.pth")],
                                  "Read-only file system", None, "probe-erofs"),
        "supernet-locked": ("supernet", [*sup_cmd, "--checkpoint", sup],
                            "is in use by another run (PID 1 on host",
                            lambda: _live_lock(sup + ".lock"), None),
        "supernet-data-changed": ("supernet", ["--train_dir", j(d, "data", "train_plus1"),
                                               *SUP, "--total_iters", "1", "--checkpoint", sup],
                                  "--train_dir is not the data checkpoint", None, None),
        "supernet-other-classes": ("supernet", ["--train_dir", j(d, "data", "train_renamed"),
                                                *SUP, "--total_iters", "1", "--checkpoint", sup],
                                   "has other classes than checkpoint", None, None),
        "supernet-unsafe-pickle": ("supernet", [*sup_cmd, "--checkpoint", j(d, "evil.pth.tar")],
                                   "Evil", None, None),
        "retrain-save-is-a-file": ("retrain", [*ret_cmd, "--save", "f"],
                                   "the --save folder eval-f is a file", None, None),
        "retrain-empty-save": ("retrain", [*ret_cmd, "--save", ""], "--save is empty",
                               None, None),
        "retrain-locked": ("retrain", [*ret_cmd, "--save", "r"],
                           "eval-r is in use by another run (PID 1",
                           lambda: _live_lock(j(d, "eval-r", ".lock")), None),
        "retrain-data-changed": ("retrain", ["--train_dir", j(d, "data", "train_plus1"),
                                             "--test_dir", val, *RET, "--total_iters", "2",
                                             "--eval-freq", "2", "--save", "r"],
                                 "48 vs 49 images", None, None),
        "retrain-corrupt-val-image": ("retrain", ["--train_dir", train, "--test_dir",
                                                  j(d, "data", "val_corrupt"), *RET,
                                                  "--total_iters", "2", "--save", "c"],
                                      "001.png: not an image or corrupt (--test_dir, checked "
                                      "before training)", None, None),
        "retrain-arch-over-log-limit": ("retrain", [*ret_cmd, "--arch-from", j(d, "log_over"),
                                                    "--save", "o"],
                                        "over the log's limit", None, None),
        "eval-unknown-class": ("retrain", ["--eval", "--eval-resume", "eval-r/best.pth.tar",
                                           "--test_dir", j(d, "data", "val_unknown"),
                                           "--workers", "0", "--device", "cpu"],
                               "class folder 'zebra' that eval-r/best.pth.tar was not trained on",
                               None, None),
        "eval-no-names-other-count": ("retrain", ["--eval", "--eval-resume",
                                                  j(d, "noname.pth.tar"), "--test_dir",
                                                  j(d, "data", "val_subset"), "--workers", "0",
                                                  "--device", "cpu"],
                                      "does not record its class names, so --test_dir must "
                                      "have exactly its 4 classes", None, None),
        "search-eval-malformed-entry": ("eval", ["--log-dir", j(d, "log_bad")],
                                        "candidate 1 is not an architecture of its space",
                                        None, None),
        "ea-log-dir-is-a-file": ("ea", ["--checkpoint", sup, "--log-dir", j(d, "a_file")],
                                 "--log-dir", None, None),
        "ea-locked": ("ea", ["--checkpoint", sup, "--log-dir", j(d, "locked_log")],
                      "is in use by another run (PID 1",
                      lambda: _live_lock(j(d, "locked_log", ".lock")), None),
        "demo-out-is-a-file": ("demo", ["--quick", "--out", j(d, "a_file")],
                               "--out", None, None),
        "ranking-out-is-a-file": ("ranking", ["--quick", "--out", j(d, "a_file")],
                                  "--out", None, None),
        "holdout-out-is-a-file": ("holdout", ["--train_dir", train, "--out", j(d, "a_file"),
                                              "--per-class", "1"], "--out", None, None),
        "flops-wrong-explicit-table": ("flops", ["--table-dir", j(d, "bad_tables"), "--arch",
                                                 w["arch"], *SPACE_R, "--classes", "4"],
                                       "is not the table of", None, None),
    }


CASE_IDS = ["supernet-empty-checkpoint", "supernet-checkpoint-is-folder", "supernet-under-a-file",
            "supernet-read-only-fs", "supernet-locked", "supernet-data-changed",
            "supernet-other-classes", "supernet-unsafe-pickle", "retrain-save-is-a-file",
            "retrain-empty-save", "retrain-locked", "retrain-data-changed",
            "retrain-corrupt-val-image", "retrain-arch-over-log-limit", "eval-unknown-class",
            "eval-no-names-other-count", "search-eval-malformed-entry", "ea-log-dir-is-a-file",
            "ea-locked", "demo-out-is-a-file", "ranking-out-is-a-file", "holdout-out-is-a-file",
            "flops-wrong-explicit-table"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_refusals_are_one_line_and_touch_nothing(case, work, capsys, monkeypatch):
    monkeypatch.chdir(work["dir"])
    script, argv, needle, setup, fault = _cases(work)[case]
    if setup is not None:  # a live run's lock file (PID 1 is always alive)
        setup()
    before = snapshot(work["dir"])
    if fault:
        monkeypatch.setenv("BNNAS_FAULT", fault)
    try:
        rc, out, err = run(script, argv, capsys)
    finally:
        after = snapshot(work["dir"])
        for name in ("sup/ck.pth.tar.lock", "eval-r/.lock", "locked_log/.lock"):
            if setup is not None and os.path.exists(os.path.join(work["dir"], name)):
                os.unlink(os.path.join(work["dir"], name))
    lines = err.strip().splitlines()
    assert rc == 2, (case, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert "Traceback" not in err + out
    assert needle in lines[0], (case, lines[0])
    assert after == before, (case, set(after.items()) ^ set(before.items()))


# ---- fault injection -------------------------------------------------------------------

def _metric_steps(path: str, key: str) -> list[int]:
    with open(path) as f:
        return [r["step"] for r in map(json.loads, f) if key in r]


def _temps(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if ckpt.TMP_MARK in n]


def test_disk_full_during_a_save_is_one_line_and_loses_nothing(tiny_data, tmp_path, capsys,
                                                               monkeypatch):
    path = str(tmp_path / "ck.pth.tar")
    cmd = ["--train_dir", os.path.join(tiny_data, "train"), *SUP, "--total_iters", "4",
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


def test_kill_during_a_save_leaves_a_temp_file_and_a_stale_lock_that_the_next_run_removes(
        tiny_data, tmp_path, capsys):
    path = str(tmp_path / "ck.pth.tar")
    cmd = ["--train_dir", os.path.join(tiny_data, "train"), *SUP, "--total_iters", "4",
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
        cmd = [*data, *RET, "--total_iters", "6", "--eval-freq", "3"]
        assert RETRAIN.main([*cmd, "--save", "ref"]) == 0
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


# ---- classes by name ------------------------------------------------------------------

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
    ds_full = RETRAIN.build_val_loader(work["val"], 32, 8, _cpu_env(), 0)
    assert ds_full.classes == ["class_0", "class_1", "class_2", "class_3"]
    sub = RETRAIN.build_val_loader(os.path.join(work["dir"], "data", "val_subset"), 32, 8,
                                   _cpu_env(), 0, classes=4)
    sub.relabel(label_map(sub.classes, ds_full.classes, 4, "--test_dir", "x"))
    assert sorted({y for _, y in sub.dataset.samples}) == [1, 3]
    assert "(" in counts["subset"] and "/10 correct)" in counts["subset"]


def _cpu_env():
    from utils.dist import DistEnv
    return DistEnv()


def test_label_map_rules():
    names = ["a", "b", "c"]
    assert label_map(["a", "b", "c"], names, 3, "--test_dir", "ck") is None
    assert label_map(["b", "c"], names, 3, "--test_dir", "ck") == [1, 2]
    with pytest.raises(UserError, match="class folder 'z' that ck was not trained on"):
        label_map(["a", "z"], names, 3, "--test_dir", "ck")
    assert label_map(["x", "y"], None, 2, "--test_dir", "ck") is None
    with pytest.raises(UserError, match="exactly its 3 classes"):
        label_map(["x", "y"], None, 3, "--test_dir", "ck")
