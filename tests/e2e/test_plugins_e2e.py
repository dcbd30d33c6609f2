"""End to end with plug-ins only: a space, a scorer and a dataset from files outside the
repository (copies of docs/examples/toy_*.py in a temp folder), through stage 1 (supernet),
stage 2 (search, then eval.py) and stage 3 (retrain), each run as its own process.

What is checked, per plug-in, is that the stage used it, not only that it was accepted:
* space: the supernet checkpoint, the search log and the retrained network are "toy"
  networks, and the retrained one is the architecture the search found;
* dataset: stage 1 and stage 3 record the toy dataset's class names and image counts
  (24 train / 8 val images per class), not some other data's;
* scorer: the log's score_kind is "toy" and every score equals the toy scorer's definition
  (sum over layers of the RMS of the op's last-BN gammas), computed here by hand from the
  checkpoint's gammas and told apart from BN-NAS's mean |gamma|; eval.py prints its label.
Also: without its --plugin each name is refused in one line (exit 2, nothing written), and
the settings files record the plug-ins as absolute paths, so `--config` reruns a stage from
another folder (a finished stage then says so and exits 0).

Processes that do not depend on each other run at the same time (the machine is small and
each process spends seconds importing torch).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import product

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_env

pytestmark = pytest.mark.slow  # six stage runs and three refusals, all subprocesses

SUPERNET = os.path.join(ROOT, "supernet", "main.py")
EA = os.path.join(ROOT, "search", "ea.py")
EVAL = os.path.join(ROOT, "search", "eval.py")
RETRAIN = os.path.join(ROOT, "retrain", "train_from_scratch.py")
EXAMPLES = os.path.join(ROOT, "docs", "examples")

# What docs/examples/toy_dataset.py generates.
TOY_CLASSES = ["red", "green", "blue", "grey"]
TRAIN_PER_CLASS, VAL_PER_CLASS = 24, 8
# The toy space: 3 searchable layers, 2 ops each (conv, then a 1x1 "project" whose BN is
# the indicator).
LAYERS, OPS = 3, 2
TOY_KERNELS = (3, 5)  # op k's conv kernel
# Tiny settings. The dataset's data root is a seed. A large learning rate moves the
# indicator gammas apart within four iterations, so RMS and mean |gamma| differ clearly.
DATA = ["--dataset", "toy", "--train_dir", "0"]
SUPERNET_ARGS = ["--space", "toy", "--input-size", "16", "--classes", "4", "--total_iters", "4",
                 "--batch_size", "16", "--learning_rate", "5", "--report_freq", "2",
                 "--workers", "0", "--device", "cpu"]
# The whole toy space is 8 architectures: a population of 8 scores every one under the
# limit, so the best of the log can be checked against all of them.
EA_ARGS = ["--score", "toy", "--method", "both", "--max-epochs", "1", "--population-num", "8",
           "--select-num", "2", "--mutation-num", "2", "--crossover-num", "2"]
RETRAIN_ARGS = ["--test_dir", "0", "--total_iters", "3", "--batch_size", "16",
                "--report_freq", "1", "--workers", "0", "--device", "cpu", "--save", "toy"]


@dataclass
class Run:
    cmd: list
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def why(self) -> str:
        return (f"{' '.join(self.cmd)}\nrc={self.rc} after {self.seconds:.1f} s\n"
                f"{self.stdout[-2500:]}\n{self.stderr[-2500:]}")


class Proc:
    """A stage script started in the background; output goes to files (no pipe to fill)."""

    def __init__(self, logs, name: str, script: str, args: list, cwd, env: dict):
        self.cmd = [os.path.relpath(script, ROOT), *map(str, args)]
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        self.t0 = time.monotonic()
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.p = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=str(cwd),
                                      env=env, stdout=o, stderr=e)

    def wait(self, timeout: float = 300) -> Run:
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        return Run(self.cmd, rc, self.out.read_text(), self.err.read_text(),
                   time.monotonic() - self.t0)


def _wait_all(procs: dict) -> dict:
    return {k: p.wait() for k, p in procs.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Copy the three examples out of the repository and run every stage on them."""
    base = tmp_path_factory.mktemp("plugins_e2e")
    plugins, work, elsewhere, logs = (base / d for d in ("plugins", "work", "elsewhere", "logs"))
    for d in (plugins, work, elsewhere, logs):
        d.mkdir()
    for src, dst in (("toy_space.py", "space.py"), ("toy_scorer.py", "scorer.py"),
                     ("toy_dataset.py", "dataset.py")):
        shutil.copy(os.path.join(EXAMPLES, src), plugins / dst)
    env = run_env()
    env["BNNAS_TABLE_DIR"] = str(base / "tables")  # the toy FLOPs table is built here
    # Relative on the command line (from work/): the written settings must make them absolute.
    space, scorer, dataset = ("../plugins/" + n for n in ("space.py", "scorer.py", "dataset.py"))
    ckpt = work / "supernet" / "checkpoint.pth.tar"
    log_dir = work / "search"
    out = dict(base=base, work=work, plugins=plugins, ckpt=ckpt, log_dir=log_dir,
               retrain_dir=work / "eval-toy", refused={})

    def start(name, script, args, cwd=work):
        return Proc(logs, name, script, args, cwd, env)

    # Each name without the plug-in that registers it (the other plug-ins given), at the
    # same time as stage 1.
    refusals = dict(
        space=start("no_space", SUPERNET, ["--plugin", dataset, *DATA, *SUPERNET_ARGS,
                                           "--checkpoint", work / "refused" / "a.pth.tar"]),
        dataset=start("no_dataset", SUPERNET, ["--plugin", space, *DATA, *SUPERNET_ARGS,
                                               "--checkpoint", work / "refused" / "b.pth.tar"]),
        score=start("no_scorer", EA, ["--plugin", space, *EA_ARGS, "--checkpoint", ckpt,
                                      "--log-dir", work / "refused" / "log"]))
    supernet = start("supernet", SUPERNET, ["--plugin", space, "--plugin", dataset, *DATA,
                                            *SUPERNET_ARGS, "--checkpoint", ckpt])
    out["supernet"] = supernet.wait()
    if out["supernet"].rc == 0:
        # The search, and stage 1 rerun from its written settings in another folder.
        out["supernet_mtime"] = os.path.getmtime(ckpt)
        search = start("search", EA, ["--plugin", space, "--plugin", scorer, *EA_ARGS,
                                      "--checkpoint", ckpt, "--log-dir", log_dir])
        rerun = start("supernet_rerun", SUPERNET,
                      ["--config", ckpt.parent / "checkpoint.config.yaml"], cwd=elsewhere)
        out["search"], out["supernet_rerun"] = search.wait(), rerun.wait()
    if out.get("search") and out["search"].rc == 0:
        out["search_json"] = (log_dir / "ea_results.json").read_text()
        # Retrain the winner; show the log; rerun the search from its written settings.
        out.update(_wait_all(dict(
            retrain=start("retrain", RETRAIN, ["--plugin", space, "--plugin", dataset, *DATA,
                                               "--arch-from", log_dir, *RETRAIN_ARGS]),
            eval=start("eval", EVAL, ["--plugin", space, "--plugin", scorer,
                                      "--log-dir", log_dir, "--topk", "3"]),
            search_rerun=start("search_rerun", EA, ["--config", log_dir / "config.yaml"],
                               cwd=elsewhere))))
    out["refused"] = _wait_all(refusals)
    return out


def _need(runs, *names) -> None:
    for n in names:
        if n not in runs:
            pytest.fail(f"'{n}' did not run: an earlier stage failed (see its test)")
        assert runs[n].rc == 0, runs[n].why()


def _indicator_gammas(state: dict) -> dict:
    """(layer, op) -> gammas of the op's last BN ("project.bn" in the toy space)."""
    pattern = re.compile(r"(?:.*\.)?layers\.(\d+)\.ops\.(\d+)\.project\.bn\.weight")
    found = {}
    for key, value in state.items():
        m = pattern.fullmatch(key)
        if m:
            found[(int(m[1]), int(m[2]))] = value.double()
    assert set(found) == set(product(range(LAYERS), range(OPS))), sorted(found)
    return found


def _rms_score(gammas: dict, arch) -> float:
    """The toy scorer, by its definition: sum over layers of sqrt(mean(gamma^2))."""
    return sum(float(gammas[(i, op)].pow(2).mean().sqrt()) for i, op in enumerate(arch)
               if op != -1)


def _mean_abs_score(gammas: dict, arch) -> float:
    """BN-NAS's own indicator (mean |gamma|), to tell the two scorers apart."""
    return sum(float(gammas[(i, op)].abs().mean()) for i, op in enumerate(arch) if op != -1)


def _settings(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _same_files(written, runs, *names) -> bool:
    """`written` names the copies `names` by absolute paths (compared resolved: the temp
    folder may sit behind a symlink)."""
    return (isinstance(written, list) and all(os.path.isabs(p) for p in written)
            and [os.path.realpath(p) for p in written]
            == [os.path.realpath(runs["plugins"] / n) for n in names])


def test_plugins_live_outside_the_repository(runs):
    assert not os.path.realpath(runs["plugins"]).startswith(os.path.realpath(ROOT) + os.sep)


@pytest.mark.parametrize("name, flag", [("space", "--space"), ("dataset", "--dataset"),
                                        ("score", "--score")])
def test_name_without_its_plugin_is_refused_in_one_line(runs, name, flag):
    r = runs["refused"][name]
    assert r.rc == 2, r.why()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.why()
    assert f"argument {flag}: invalid choice: 'toy'" in lines[0] and "Traceback" not in r.stderr
    assert not (runs["work"] / "refused").exists()  # nothing written


def test_supernet_used_the_toy_space_and_dataset(runs):
    _need(runs, "supernet")
    ck = torch.load(runs["ckpt"], map_location="cpu", weights_only=True)
    assert ck["kind"] == "supernet" and ck["config"]["space"] == "toy"
    assert ck["config"]["input_size"] == 16 and ck["config"]["classes"] == 4
    assert ck["iter"] == ck["total_iters"] == 4
    _indicator_gammas(ck["state_dict"])  # the toy space's ops, each with its project BN
    assert ck["args"]["dataset"] == "toy"
    # The data really came from the toy dataset: its class names and image count.
    assert ck["classes"] == TOY_CLASSES
    assert ck["data"]["classes"] == TOY_CLASSES
    assert ck["data"]["counts"] == [TRAIN_PER_CLASS] * 4
    assert ck["data"]["num_images"] == 4 * TRAIN_PER_CLASS
    assert re.search(rf"\b{4 * TRAIN_PER_CLASS} images\b", runs["supernet"].stdout)


def test_search_used_the_toy_scorer(runs):
    _need(runs, "search")
    log = json.loads(runs["search_json"])
    assert log["score_kind"] == "toy" and log["config"]["space"] == "toy"
    assert log["classes"] == TOY_CLASSES  # the supernet's data, carried into the log
    assert "(RMS gamma (toy example), higher is better)" in runs["search"].stdout
    ck = torch.load(runs["ckpt"], map_location="cpu", weights_only=True)
    gammas = _indicator_gammas(ck["state_dict"])
    # Every logged score is the toy scorer's definition, computed here from the gammas.
    for c in log["candidates"] + [log["exact"]]:
        assert c["score"] == pytest.approx(_rms_score(gammas, c["arch"]), rel=1e-9, abs=1e-12)
    best = log["best"]
    assert best["score"] == pytest.approx(_rms_score(gammas, best["arch"]), rel=1e-9)
    # ... and not BN-NAS's mean |gamma|, which the gammas' spread sets clearly apart.
    assert abs(best["score"] - _mean_abs_score(gammas, best["arch"])) > 1e-4
    # The population covers the whole space under the limit: the best is the hand argmax.
    hand_best = max(_rms_score(gammas, c["arch"]) for c in log["candidates"])
    assert best["score"] == pytest.approx(hand_best, rel=1e-9)
    assert log["exact"]["score"] == pytest.approx(hand_best, rel=1e-9)


def test_eval_names_the_toy_scorer(runs):
    _need(runs, "search", "eval")
    log = json.loads(runs["search_json"])
    lines = runs["eval"].stdout.splitlines()
    assert "RMS gamma" in lines[0], runs["eval"].why()
    winner = " ".join(map(str, log["best"]["arch"]))
    assert any(line.split()[:1] == ["1"] and winner in line for line in lines[1:]), lines


def test_retrain_used_the_toy_space_found_architecture_and_dataset(runs):
    _need(runs, "search", "retrain")
    log = json.loads(runs["search_json"])
    d = runs["retrain_dir"]
    best = torch.load(d / "best.pth.tar", map_location="cpu", weights_only=True)
    assert best["kind"] == "subnet" and best["config"] == log["config"]
    assert best["config"]["space"] == "toy"
    assert list(best["arch"]) == list(log["best"]["arch"])  # the architecture found
    # Its weights are the toy ops of that architecture: op k is a KERNELS[k] conv.
    for i, op in enumerate(best["arch"]):
        w = best["state_dict"][f"layers.{i}.conv.conv.weight"]
        assert w.shape[-2:] == (TOY_KERNELS[op],) * 2, (i, op, tuple(w.shape))
    with open(d / "result.json") as f:
        result = json.load(f)
    assert result["arch"] == list(log["best"]["arch"]) and result["config"] == log["config"]
    assert result["dataset"] == "toy" and best["args"]["dataset"] == "toy"
    assert best["classes"] == TOY_CLASSES and best["data"]["classes"] == TOY_CLASSES
    assert best["data"]["num_images"] == 4 * TRAIN_PER_CLASS
    # The validation split is the toy dataset's too (8 images per class).
    for text in (runs["retrain"].stdout, (d / "log.txt").read_text()):
        assert re.search(rf"\b{4 * TRAIN_PER_CLASS} training images\b", text), text
        assert re.search(rf"\b{4 * VAL_PER_CLASS} validation images\b", text), text
    assert _same_files(_settings(d / "config.yaml")["plugin"], runs, "space.py", "dataset.py")


def test_written_settings_record_plugins_absolute_and_rerun(runs):
    _need(runs, "supernet", "supernet_rerun")
    s = _settings(runs["ckpt"].parent / "checkpoint.config.yaml")
    assert _same_files(s["plugin"], runs, "space.py", "dataset.py"), s["plugin"]
    assert s["space"] == "toy" and s["dataset"] == "toy"
    r = runs["supernet_rerun"]  # from another folder: only the absolute paths lead back
    assert "already finished" in r.stdout and "nothing to do" in r.stdout, r.why()
    assert os.path.getmtime(runs["ckpt"]) == runs["supernet_mtime"]

    _need(runs, "search", "search_rerun")
    s = _settings(runs["log_dir"] / "config.yaml")
    assert _same_files(s["plugin"], runs, "space.py", "scorer.py") and s["score"] == "toy"
    r = runs["search_rerun"]
    assert "already holds this finished search" in r.stdout, r.why()
    assert (runs["log_dir"] / "ea_results.json").read_text() == runs["search_json"]
