"""The flags of stage 3 (retrain/train_from_scratch.py) and the checks that need several.

    parser = build_parser()          # after utils.plugins.load_plugins_from_argv(argv)
    args = check_args(parser.parse_args(argv))
"""
from __future__ import annotations

import argparse

from utils.checkpoints.subnet import unset_space_defaults
from utils.cli.common import (ArgumentParser, UserError, add_space_args, batch_size_int,
                              fraction, momentum_float, nonneg_float, nonneg_int, positive_int,
                              seed_int)
from utils.cli.config_file import add_config_arg
from utils.data.loaders import add_augment_args, add_data_args, add_val_crop_arg
from utils.dist import add_launcher_args
from utils.plugins import add_plugin_arg
from utils.train.amp import add_amp_args


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Retrain a BN-NAS subnet from scratch (or evaluate one with --eval).",
        epilog="Space flags not given come from the search log (--arch-from) or the evaluated "
               "checkpoint, else the ImageNet defaults; --classes then defaults to the number "
               "of class folders of the data. When resuming or evaluating, --dataset, "
               "--input-format, --resize-mode and --val-crop-pct default to the "
               "checkpoint's (bgr255 and linear, the original's OpenCV resize, for the "
               "reference's checkpoints).")
    p.add_argument("--train_dir", "--train-dir", dest="train_dir", default=None,
                   help="training set: an ImageFolder (<dir>/<class>/<image>), or the root "
                        "--dataset takes")
    p.add_argument("--test_dir", "--test-dir", dest="test_dir", default=None,
                   help="validation set (--dataset's validation split of this root)")
    p.add_argument("--model_id", "--model-id", dest="model_id", default=None,
                   help='architecture, e.g. "3 -1 0 4 ..." (-1 = skip); default: the '
                        "published one of the space (BN-NAS for mobilenet)")
    p.add_argument("--arch-from", "--arch_from", dest="arch_from", default=None,
                   metavar="LOG_DIR",
                   help="retrain the best architecture of this search log; space flags "
                        "not given come from the log")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=batch_size_int,
                   default=1024,
                   help="GLOBAL batch size, split evenly over the processes; validation "
                        "uses the same per-process batch (default: 1024)")
    p.add_argument("--learning_rate", "--learning-rate", dest="learning_rate", type=nonneg_float,
                   default=0.5, help="initial LR, decayed linearly to 0 per iteration "
                                     "(default: 0.5)")
    p.add_argument("--momentum", type=momentum_float, default=0.9,
                   help="SGD momentum, [0, 1) (default: 0.9)")
    p.add_argument("--weight_decay", "--weight-decay", dest="weight_decay", type=nonneg_float,
                   default=4e-5, help="(default: 4e-5) on the parameters --decay-params names")
    p.add_argument("--decay-params", "--decay_params", dest="decay_params", default="conv",
                   choices=("conv", "conv+linear-weight"),
                   help="which parameters weight decay applies to: conv = the 4-D conv "
                        "weights only, what the original's decay group amounts to in its "
                        "retrained network (default); conv+linear-weight = also the "
                        "classifier's weight, as this project did before")
    p.add_argument("--epochs", type=positive_int, default=240, help="(default: 240)")
    p.add_argument("--total_iters", "--total-iters", dest="total_iters", type=positive_int,
                   default=None,
                   help="number of iterations; overrides --epochs")
    p.add_argument("--save", default=None,
                   help="run name: outputs go to eval-NAME/ (default NAME: retrain)")
    p.add_argument("--allow-data-change", "--allow_data_change", dest="allow_data_change",
                   action="store_true",
                   help="resume although --train_dir is not the data the checkpoint was "
                        "trained on (images added or removed; the class names and "
                        "--dataset must match)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds init, data order, augmentation, dropout (default: 0)")
    p.add_argument("--grad_clip", "--grad-clip", dest="grad_clip", type=nonneg_float,
                   default=5.0,
                   help="clip the gradient norm (0 = off) (default: 5)")
    p.add_argument("--label_smooth", "--label-smooth", dest="label_smooth", type=fraction,
                   default=0.1, help="(default: 0.1)")
    p.add_argument("--dropout", type=fraction, default=None,
                   help="dropout before the classifier (default: the space's, 0.2 mobilenet, "
                        "0.1 shufflenet)")
    p.add_argument("--report_freq", "--report-freq", dest="report_freq", type=positive_int,
                   default=50,
                   help="iterations between progress/metrics updates, the only host syncs "
                        "(default: 50)")
    p.add_argument("--eval-freq", "--eval_freq", dest="eval_freq", type=positive_int,
                   default=None,
                   help="iterations between validations (default: once per epoch); also at "
                        "the end")
    p.add_argument("--stop-after", "--stop_after", dest="stop_after", type=nonneg_int,
                   default=0,
                   help="save and exit after N iterations in this invocation (time-limited "
                        "jobs); rerun to continue")
    p.add_argument("--eval", action="store_true",
                   help="only evaluate --eval-resume on --test_dir")
    p.add_argument("--eval-resume", "--eval_resume", dest="eval_resume", default=None,
                   help="checkpoint to evaluate: this project's or the reference's retrained "
                        "one (needs --model_id) (default: eval-NAME/best.pth.tar)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda (one GPU per process) (default: auto)")
    add_data_args(p, dataset_default=None)
    add_val_crop_arg(p, default=None)
    add_augment_args(p)
    add_amp_args(p)
    add_space_args(p, classes_default=None)
    add_launcher_args(p)
    add_plugin_arg(p)
    # Unset space flags and input format fall back to the search log / checkpoint.
    unset_space_defaults(p)
    p.set_defaults(input_format=None)
    add_config_arg(p, "retrain/train_from_scratch.py")
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Flags that do not go together. (Numeric ranges are checked while parsing: the
    utils.cli.common types above.)"""
    if args.model_id is not None and args.arch_from is not None:
        raise UserError("give either --model_id or --arch-from, not both")
    return args


__all__ = ["build_parser", "check_args"]
