"""utils/train/loop.py with small fake tasks: report windows, --stop-after, a signal, exact
resume, validation points, divergence (exit 3), and the resume check's one line."""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from utils.cli.common import UserError, main_guard
from utils.dist import DistEnv
from utils.train.loop import LoopSpec, Task, Validation, train_model
from utils.train.state import changed_run_settings, check_run_settings

ENV = DistEnv()


def spec_for(tmp_path, **kw) -> LoopSpec:
    base = dict(total_iters=8, steps_per_epoch=4, batch_size=2, batch_per_rank=2,
                report_freq=3, checkpoint=str(tmp_path / "ck.pth"),
                metrics_path=str(tmp_path / "m.jsonl"))
    return LoopSpec(**{**base, **kw})


def rows(tmp_path, key: str) -> list[dict]:
    with open(tmp_path / "m.jsonl") as f:
        return [r for r in map(json.loads, f) if key in r]


class Scripted(Task):
    """Loss it + 1 and one correct sample (of 2) per step; records saves and batches."""

    def __init__(self, bad_at: int | None = None, signal_at: int | None = None):
        self.net = nn.Linear(1, 1)
        self.bad_at, self.signal_at = bad_at, signal_at
        self.saves: list[tuple[int, bool, bool]] = []
        self.evals: list[int] = []
        self.epochs: list[tuple[int, int]] = []

    def batches(self, epoch, step0):
        self.epochs.append((epoch, step0))
        return range(step0, 4)

    def step(self, batch, it):
        if it == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = torch.tensor(float(it + 1))
        if it == self.bad_at:
            loss = loss * float("inf")
        return loss, torch.tensor(1)

    def lr_at(self, it):
        return 0.1

    def save(self, it, train_time, best=False, eval_pending=False):
        self.saves.append((it, best, eval_pending))

    def evaluate(self, it):
        self.evals.append(it)
        return Validation(f"validated {it}", dict(valid_acc_top1=float(it)), improved=it == 4)


def test_reports_every_report_freq_and_at_the_end_with_the_window_means(tmp_path, capsys):
    task = Scripted()
    result = train_model(task, spec_for(tmp_path, epoch_summary=True), ENV)
    assert (result.it, result.done, result.exit_code, result.stopped_by) == (8, 8, 0, None)
    reports = rows(tmp_path, "loss")
    # every 3 iterations, at each epoch end (4 iterations) and at the end
    assert [r["step"] for r in reports] == [3, 4, 6, 8]
    # the window's mean loss: iterations 1-3 have losses 1, 2, 3; 4 alone has 4; 5-6: 5, 6
    assert [r["loss"] for r in reports] == [2.0, 4.0, 5.5, 7.5]
    assert all(r["top1"] == 50.0 and r["lr"] == 0.1 for r in reports)
    assert [r["epoch"] for r in reports] == [0, 0, 1, 1]
    out = capsys.readouterr().out
    assert "epoch 1: iteration 4/8 loss 2.5000 top-1 50.00%" in out
    assert "epoch 2: iteration 8/8 loss 6.5000 top-1 50.00%" in out
    assert task.saves == [(4, False, False), (8, False, False)]  # the epoch ends
    assert rows(tmp_path, "event")[-1]["event"] == "finished"


def test_stop_after_saves_and_leaves_at_that_iteration(tmp_path, capsys):
    task = Scripted()
    result = train_model(task, spec_for(tmp_path, stop_after=3, save_freq=2), ENV)
    assert (result.it, result.done, result.stopped_by, result.exit_code) == (
        3, 3, "--stop-after 3", 0)
    assert task.saves == [(2, False, False), (3, False, False)]
    assert ("stopped by --stop-after 3 at iteration 3/8; checkpoint saved to "
            f"{tmp_path / 'ck.pth'}; rerun the same command to resume") in capsys.readouterr().out
    # a rerun from iteration 3 starts mid-epoch and stops after 3 more
    task = Scripted()
    result = train_model(task, spec_for(tmp_path, start=3, resumed=True, stop_after=3), ENV)
    assert result.it == 6 and task.epochs == [(0, 3), (1, 0)] and task.saves == [(6, False, False)]
    assert rows(tmp_path, "event")[-1]["event"] == "stopped"


def test_a_signal_finishes_the_step_saves_and_exits_128_plus_its_number(tmp_path):
    task = Scripted(signal_at=4)
    result = train_model(task, spec_for(tmp_path), ENV)
    assert (result.it, result.stopped_by, result.exit_code) == (5, "SIGTERM", 143)
    assert task.saves[-1] == (5, False, False)


def test_validation_points_save_before_and_after_validating(tmp_path, capsys):
    task = Scripted()
    train_model(task, spec_for(tmp_path, eval_freq=4, report_freq=8), ENV)
    assert task.evals == [4, 8]
    # saved as pending, validated, saved again (the first validation is the best)
    assert task.saves == [(4, False, True), (4, True, False), (8, False, True), (8, False, False)]
    assert [r["step"] for r in rows(tmp_path, "valid_acc_top1")] == [4, 8]
    assert "validated 4" in capsys.readouterr().out
    # a run whose checkpoint was saved at a validation point it did not validate
    task = Scripted()
    train_model(task, spec_for(tmp_path, eval_freq=4, start=4, resumed=True,
                               validate_first=True), ENV)
    assert task.evals == [4, 8]


def test_a_nonfinite_loss_stops_with_exit_code_3_and_saves_nothing(tmp_path, capsys):
    task = Scripted(bad_at=4)
    with pytest.raises(UserError) as e:
        train_model(task, spec_for(tmp_path, save_freq=5), ENV)
    assert e.value.exit_code == 3
    assert task.saves == []
    assert str(e.value) == ("training diverged: the loss is nan or inf at iteration 5/8 "
                            "(nothing was saved); lower --learning_rate or check the data")
    assert rows(tmp_path, "event")[-1]["event"] == "diverged"
    assert [r["step"] for r in rows(tmp_path, "loss")] == [3]  # the bad window is not reported

    @main_guard
    def main() -> int:
        return train_model(Scripted(bad_at=1), spec_for(tmp_path, start=1, resumed=True),
                           ENV).exit_code

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()  # (above it: the progress bar)
    assert err[-1] == (
        f"error: training diverged: the loss is nan or inf at iteration 2/8 ({tmp_path / 'ck.pth'} "
        f"keeps iteration 1, the last good state); lower --learning_rate or check the data")


class Learning(Task):
    """A real (tiny) model trained by SGD on data that depends on (epoch, step) only;
    its checkpoint is a file holding the weights, momentum and iteration."""

    def __init__(self, path: str, resume: bool = False):
        torch.manual_seed(0)
        self.net = nn.Linear(4, 3)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        self.path, self.start = path, 0
        if resume:
            state = torch.load(path, weights_only=True)
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            self.start = state["it"]

    def batches(self, epoch, step0):
        for step in range(step0, 5):
            g = torch.Generator().manual_seed(1000 * epoch + step)
            yield torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)

    def step(self, batch, it):
        x, y = batch
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(it)
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach(), logits.argmax(1).eq(y).sum()

    def lr_at(self, it):
        return 0.1 * (1 - it / 12)

    def save(self, it, train_time, best=False, eval_pending=False):
        torch.save(dict(net=self.net.state_dict(), opt=self.opt.state_dict(), it=it), self.path)


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    def spec(path, **kw):
        return spec_for(tmp_path, total_iters=12, steps_per_epoch=5, batch_size=6,
                        batch_per_rank=6, report_freq=2, checkpoint=path, **kw)

    full = str(tmp_path / "full.pth")
    train_model(Learning(full), spec(full), ENV)
    cut = str(tmp_path / "cut.pth")
    assert train_model(Learning(cut), spec(cut, stop_after=4), ENV).it == 4
    again = Learning(cut, resume=True)  # across the epoch boundary (5), stopped again
    assert train_model(again, spec(cut, start=again.start, resumed=True, stop_after=3),
                       ENV).it == 7
    last = Learning(cut, resume=True)
    assert train_model(last, spec(cut, start=last.start, resumed=True), ENV).it == 12
    a, b = torch.load(full, weights_only=True), torch.load(cut, weights_only=True)
    assert a["it"] == b["it"] == 12
    for k, v in a["net"].items():
        assert torch.equal(v, b["net"][k]), k


# ---- the resume check -------------------------------------------------------------------

@dataclass
class Run:
    seed: int = field(default=0, metadata={"run_defining": True})
    batch_size: int = field(default=8, metadata={"run_defining": True})
    resize_mode: str = field(default="antialias", metadata={
        "run_defining": True, "saved_in": "args", "if_missing": "antialias"})
    input_format: str = field(default="rgb", metadata={
        "run_defining": True, "saved_in": "args", "if_missing": None})
    learning_rate: float = 0.1  # not run-defining: may change


def test_the_resume_check_names_each_changed_run_defining_field_in_one_line():
    saved = dict(seed=0, batch_size=8, args=dict(resize_mode="antialias", input_format="rgb"))
    check_run_settings(saved, Run(learning_rate=0.5), "ck.pth", "--checkpoint")
    with pytest.raises(UserError) as e:
        check_run_settings(saved, Run(batch_size=16, seed=3), "ck.pth", "--checkpoint")
    assert str(e.value) == ("checkpoint ck.pth was made with other run settings (seed: 0 vs 3; "
                            "batch_size: 8 vs 16; checkpoint vs now): rerun with the original "
                            "settings or use another --checkpoint")
    # a checkpoint from before a setting was recorded: what it used then, or no comparison
    old = dict(seed=0, batch_size=8, args={})
    assert changed_run_settings(old, Run(input_format="bgr255")) == []
    assert changed_run_settings(old, Run(resize_mode="linear")) == [
        "resize_mode: antialias vs linear"]


def test_the_stage_configs_mark_what_a_resume_must_keep():
    from utils.train.config import (RetrainConfig, SupernetConfig, resume_noted_fields,
                                    run_defining_fields)
    from utils.train.retrain_args import build_parser as retrain_parser
    from utils.train.supernet_args import build_parser as supernet_parser, check_args
    base = SupernetConfig.from_args(check_args(supernet_parser().parse_args([])))
    sup = base
    assert run_defining_fields(sup) == ("dataset", "seed", "batch_size", "total_iters",
                                        "steps_per_epoch")
    assert resume_noted_fields(sup) == ("learning_rate", "min_lr", "momentum", "weight_decay",
                                        "grad_clip", "label_smooth", "amp")
    sup = base.resolved(steps_per_epoch=6)
    assert (sup.total_iters, sup.steps_per_epoch) == (60, 6)  # 10 epochs of 6
    saved = dict(seed=0, batch_size=512, total_iters=60, steps_per_epoch=6)
    check_run_settings(saved, sup, "ck", "--checkpoint")
    with pytest.raises(UserError, match=r"\(total_iters: 60 vs 30; steps_per_epoch: 6 vs 3; "
                                        r"checkpoint vs now\)"):
        check_run_settings(saved, base.resolved(steps_per_epoch=3), "ck", "--checkpoint")
    ret = RetrainConfig.from_args(retrain_parser().parse_args(["--total_iters", "9"]))
    assert run_defining_fields(ret)[-2:] == ("input_format", "resize_mode")
    assert ret.resolved(steps_per_epoch=4).total_iters == 9
