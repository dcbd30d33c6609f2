"""--dataset and --val-crop-pct through the stages: supernet, retrain, --eval, export.

A tiny supernet and retrain on the bundled Fashion-MNIST slice (`--dataset fashion_mnist
--train_dir slice --test_dir slice`, 16x16 inputs, width 0.25, 2 iterations):
* both run; their checkpoints record the dataset (and the retrain its crop fraction);
* resuming either with another --dataset is refused in one line, also with
  --allow-data-change (which is for other images of the same dataset);
* `--eval --eval-resume best.pth.tar` with no dataset or crop flag validates exactly as
  training did (same top-1 and loss), from what the checkpoint records; a flag overrides;
* bad --val-crop-pct values are refused in one line, exit 2;
* retrain/export.py's arch.json gives the dataset's mean/std and the crop fraction.
The stage scripts' `main` runs in this process (a subprocess mostly imports torch).
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from conftest import ROOT
from utils.checkpoints.io import load

SIZE = ["--input-size", "16", "--width-mult", "0.25", "--classes", "10"]
FMNIST = ["--dataset", "fashion_mnist", "--train_dir", "slice"]
COMMON = ["--workers", "0", "--device", "cpu", "--report_freq", "1"]
RETRAIN = [*FMNIST, "--test_dir", "slice", *SIZE, *COMMON, "--batch_size", "50",
           "--total_iters", "2", "--eval-freq", "2", "--val-crop-pct", "1.0", "--save", "fm"]


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RETRAIN_SCRIPT = _load("datasets_retrain", "retrain/train_from_scratch.py")
EXPORT_SCRIPT = _load("datasets_export", "retrain/export.py")


def _call(main, args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def retrain(args, capsys):
    return _call(RETRAIN_SCRIPT.main, args, capsys)


def supernet(args, capsys):
    from supernet.main import main
    return _call(main, args, capsys)


def _one_line_error(rc: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working folder (the retrain writes eval-NAME/ there) with its own FLOPs tables."""
    d = tmp_path_factory.mktemp("datasets_stages")
    old_dir, old_tables = os.getcwd(), os.environ.get("BNNAS_TABLE_DIR")
    os.environ["BNNAS_TABLE_DIR"] = str(d / "tables")
    os.chdir(d)
    state = torch.get_rng_state()
    try:
        yield d
    finally:
        torch.set_rng_state(state)
        os.chdir(old_dir)
        if old_tables is None:
            os.environ.pop("BNNAS_TABLE_DIR", None)
        else:
            os.environ["BNNAS_TABLE_DIR"] = old_tables


@pytest.fixture(scope="module")
def retrained(work):
    """eval-fm/: a 2-iteration fashion_mnist retrain validated at --val-crop-pct 1.0."""
    rc = RETRAIN_SCRIPT.main(RETRAIN)
    assert rc == 0
    return work / "eval-fm"


def test_supernet_records_its_dataset_and_refuses_another_on_resume(work, tiny_data, capsys):
    ck = str(work / "sup" / "checkpoint.pth.tar")
    cmd = [*SIZE, *COMMON, "--batch_size", "8", "--checkpoint", ck, "--total_iters", "3"]
    rc, out, err = supernet([*FMNIST, *cmd, "--stop-after", "2"], capsys)
    assert rc == 0, err
    assert "6000 images (--dataset fashion_mnist), 10 classes" in out
    state = load(ck)
    assert state["args"]["dataset"] == "fashion_mnist" and state["iter"] == 2
    assert state["classes"][0] == "0_tshirt_top"

    # Another dataset, even with --allow-data-change: refused in one line, nothing written.
    other = ["--train_dir", os.path.join(tiny_data, "train"), *cmd]
    for extra in ([], ["--allow-data-change"]):
        rc, out, err = supernet([*other, *extra], capsys)  # the default: imagefolder
        _one_line_error(rc, err, "dataset: fashion_mnist vs imagefolder")
    assert load(ck)["iter"] == 2

    # The same dataset resumes.
    rc, out, err = supernet([*FMNIST, *cmd], capsys)
    assert rc == 0, err
    assert "resuming from" in out and load(ck)["iter"] == 3


def test_retrain_records_dataset_and_crop_and_eval_reproduces_it(retrained, capsys):
    best = load(str(retrained / "best.pth.tar"))
    assert best["args"]["dataset"] == "fashion_mnist" and best["args"]["val_crop_pct"] == 1.0
    result = json.load(open(retrained / "result.json"))
    assert result["dataset"] == "fashion_mnist" and result["val_crop_pct"] == 1.0
    assert result["iters"] == result["best_iters"] == 2  # best.pth.tar holds the final weights
    rows = [json.loads(line) for line in open(retrained / "metrics.jsonl")]
    final = [r for r in rows if "valid_loss" in r][-1]
    assert final["valid_acc_top1"] == result["final_acc_top1"]

    # No dataset or crop flag: the checkpoint's (fashion_mnist mean/std, crop 1.0).
    ev = ["--eval", "--eval-resume", "eval-fm/best.pth.tar", "--test_dir", "slice",
          "--batch_size", "50", *COMMON]
    rc, out, err = retrain([*ev, "--save", "fm_eval"], capsys)
    assert rc == 0, err
    assert "dataset fashion_mnist; val crop 1" in out
    got = json.load(open("eval-fm_eval/eval.json"))
    assert got["valid_acc_top1"] == result["final_acc_top1"]
    assert got["valid_loss"] == pytest.approx(final["valid_loss"], rel=1e-6)
    assert got["dataset"] == "fashion_mnist" and got["val_crop_pct"] == 1.0 and \
        got["samples"] == 2000

    # A flag overrides the checkpoint's crop: other images, another loss.
    rc, out, err = retrain([*ev, "--val-crop-pct", "0.875", "--save", "fm_eval875"], capsys)
    assert rc == 0, err
    other = json.load(open("eval-fm_eval875/eval.json"))
    assert other["val_crop_pct"] == 0.875 and other["valid_loss"] != got["valid_loss"]


def test_retrain_resume_refuses_another_dataset(retrained, tiny_data, capsys):
    data = ["--train_dir", os.path.join(tiny_data, "train"),
            "--test_dir", os.path.join(tiny_data, "val")]
    base = [*SIZE, *COMMON, "--eval-freq", "2", "--save", "fm"]
    for extra in ([], ["--allow-data-change"]):
        rc, out, err = retrain([*data, "--dataset", "imagefolder", *base, "--batch_size", "16",
                                "--total_iters", "4", *extra], capsys)
        _one_line_error(rc, err, "dataset: fashion_mnist vs imagefolder")
    # Without --dataset a finished run resumes with the checkpoint's and reports itself.
    rc, out, err = retrain(["--train_dir", "slice", "--test_dir", "slice", *base,
                            "--batch_size", "50", "--total_iters", "2"], capsys)
    assert rc == 0, err
    assert "retraining already finished (2/2 iterations)" in out


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_bad_val_crop_pct_is_one_line(value, capsys):
    rc, out, err = retrain([*RETRAIN, "--val-crop-pct", value], capsys)
    _one_line_error(rc, err, "argument --val-crop-pct")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_card_gives_the_datasets_normalisation_and_crop(retrained, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    rc, out, err = _call(EXPORT_SCRIPT.main, ["--checkpoint", "eval-fm/best.pth.tar",
                                              "--out", "exported_fm"], capsys)
    assert rc == 0, err
    card = json.load(open("exported_fm/arch.json"))["input"]
    assert card["dataset"] == "fashion_mnist" and card["format"] == "rgb"
    assert card["mean"] == [0.2860] * 3 and card["std"] == [0.3530] * 3
    assert card["crop_pct"] == 1.0 and card["resize_shorter_side"] == 16 == card["center_crop"]

    # Flags override what the checkpoint records.
    rc, out, err = _call(EXPORT_SCRIPT.main, ["--checkpoint", "eval-fm/best.pth.tar",
                                              "--out", "exported_in", "--dataset",
                                              "imagefolder", "--val-crop-pct", "0.875"], capsys)
    assert rc == 0, err
    card = json.load(open("exported_in/arch.json"))["input"]
    assert card["mean"] == [0.485, 0.456, 0.406] and card["crop_pct"] == 0.875
    assert card["resize_shorter_side"] == 18

    from utils.export.hub import build_subnet, describe_input
    loaded = build_subnet(checkpoint="eval-fm/best.pth.tar")
    assert (loaded.dataset, loaded.crop_pct) == ("fashion_mnist", 1.0)
    assert describe_input("rgb", "fashion_mnist")["std"] == [0.3530] * 3
    assert describe_input("bgr255", "fashion_mnist")["mean"] == [0.0] * 3


def test_search_scores_on_the_dataset_the_supernet_was_trained_on(work, capsys):
    """SPOS accuracy and a zero-cost proxy read --train_dir / --test_dir as the supernet's
    dataset (fashion_mnist: 'slice' is no folder), without a --dataset flag."""
    from utils.search.log import load_pth
    ck = str(work / "spos" / "checkpoint.pth.tar")
    rc, out, err = supernet([*FMNIST, *SIZE, *COMMON, "--batch_size", "8", "--train-all",
                             "--total_iters", "1", "--checkpoint", ck], capsys)
    assert rc == 0, err
    ea = _load("datasets_ea", "search/ea.py").main
    small = ["--checkpoint", ck, "--method", "ea", "--max-epochs", "1", "--population-num", "2",
             "--select-num", "1", "--crossover-num", "0", "--mutation-num", "0",
             "--train_dir", "slice", "--test_dir", "slice", "--device", "cpu",
             "--workers", "0"]
    spos = ["--score", "accuracy", "--bn-batches", "1", "--batch-size", "8",
            "--val-images", "20"]
    rc, out, err = _call(ea, [*small, *spos, "--log-dir", "log_acc"], capsys)
    assert rc in (0, None), err
    sig = load_pth(os.path.join("log_acc", "ea_results.pth.tar"))["settings"]
    assert sig["dataset"] == "fashion_mnist"
    rc, out, err = _call(ea, [*small, "--score", "synflow", "--proxy-batch", "4",
                              "--log-dir", "log_syn"], capsys)
    assert rc in (0, None), err
    assert load_pth(os.path.join("log_syn", "ea_results.pth.tar"))["settings"]["dataset"] == \
        "fashion_mnist"
    # --dataset overrides: imagefolder reads 'slice' as a folder, which does not exist.
    rc, out, err = _call(ea, [*small, *spos, "--dataset", "imagefolder", "--log-dir", "log_if"],
                         capsys)
    _one_line_error(rc, err, "--train_dir slice does not exist")

    # The context resolves it: flag, else the checkpoint's, else None (imagefolder).
    import argparse
    from utils.search.scorers import ScoreContext
    ctx = ScoreContext.from_checkpoint(ck, argparse.Namespace(dataset=None))
    assert ctx.dataset == "fashion_mnist"
    assert ScoreContext.from_checkpoint(ck, argparse.Namespace(dataset="imagefolder")
                                        ).dataset == "imagefolder"
    assert ScoreContext(space=None, table=None).dataset is None
