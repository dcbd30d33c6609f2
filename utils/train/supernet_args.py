"""The flags of stage 1 (supernet/main.py) and the checks that need several of them.

    parser = build_parser()          # after utils.plugins.load_plugins_from_argv(argv)
    args = check_args(parser.parse_args(argv))   # --epochs default, flag conflicts
"""
from __future__ import annotations

import argparse

from utils.cli.common import (ArgumentParser, UserError, add_space_args, batch_size_int,
                              fraction, momentum_float, nonneg_float, nonneg_int, positive_int,
                              seed_int)
from utils.cli.config_file import add_config_arg
from utils.data.loaders import add_augment_args, add_data_args
from utils.dist import add_launcher_args
from utils.plugins import add_plugin_arg
from utils.train.amp import add_amp_args
from utils.train.supernet import BN_PARAM_CHOICES

# The original's defaults (docs/method.md, "Recipes"): BN-NAS trains 10 epochs, SPOS 100.
EPOCHS_BN_NAS, EPOCHS_SPOS = 10, 100


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Train a BN-NAS supernet (indicator BNs only; --train-all for SPOS).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_dir", "--train-dir", dest="train_dir", default=None,
                   help="training set: an ImageFolder (<dir>/<class>/<image>), or the root "
                        "--dataset takes")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=batch_size_int,
                   default=512,
                   help="GLOBAL batch size, split evenly over the processes")
    p.add_argument("--learning_rate", "--learning-rate", dest="learning_rate",
                   type=nonneg_float, default=0.25)
    p.add_argument("--min_lr", "--min-lr", dest="min_lr", type=nonneg_float, default=5e-4,
                   help="final LR of the per-iteration linear decay")
    p.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum, [0, 1)")
    p.add_argument("--weight_decay", "--weight-decay", dest="weight_decay", type=nonneg_float,
                   default=4e-5, help="on every conv weight and the classifier's weight and "
                                      "bias (the original's decay group), never on BN")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"default {EPOCHS_BN_NAS} (BN-NAS), {EPOCHS_SPOS} with --train-all")
    p.add_argument("--total_iters", "--total-iters", dest="total_iters", type=positive_int,
                   default=None, help="number of iterations; overrides --epochs")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds paths, data order and augmentation (0 <= seed < 2**32)")
    p.add_argument("--grad_clip", "--grad-clip", dest="grad_clip", type=nonneg_float,
                   default=5.0, help="clip gradients BY VALUE (0 = off)")
    p.add_argument("--label_smooth", "--label-smooth", dest="label_smooth", type=fraction,
                   default=0.1, help="label smoothing, [0, 1)")
    p.add_argument("--report_freq", "--report-freq", dest="report_freq", type=positive_int,
                   default=50,
                   help="iterations between progress/metrics updates (the only host syncs)")
    p.add_argument("--train-all", "--train_all", dest="train_all", action="store_true",
                   help="SPOS baseline: train every parameter (default: BN-NAS, only the "
                        "indicator BN gamma/beta of each candidate op)")
    g = p.add_argument_group("ablations of BN-only training (not the original's)")
    g.add_argument("--bn-params", "--bn_params", dest="bn_params", default="indicator",
                   choices=BN_PARAM_CHOICES,
                   help="which BN affine parameters train: indicator = the last BN of each "
                        "candidate op (the original); all = every BN's gamma and beta")
    g.add_argument("--train-classifier", "--train_classifier", dest="train_classifier",
                   action="store_true", help="also train the classifier's weight and bias "
                                             "(the original keeps it frozen at init)")
    p.add_argument("--checkpoint", default="./checkpoint.pth.tar",
                   help="checkpoint to write, and to resume from when it exists")
    p.add_argument("--allow-data-change", "--allow_data_change", dest="allow_data_change",
                   action="store_true",
                   help="resume although --train_dir is not the data the checkpoint was "
                        "trained on (images added or removed; the class names and "
                        "--dataset must match)")
    p.add_argument("--save-freq", "--save_freq", dest="save_freq", type=nonneg_int, default=0,
                   help="also save every N iterations (0: only at epoch ends and the end)")
    p.add_argument("--stop-after", "--stop_after", dest="stop_after", type=nonneg_int, default=0,
                   help="save and exit after N iterations in this invocation (time-limited "
                        "jobs); rerun to continue")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (one GPU per process)")
    p.add_argument("--dump-dir", dest="dump_dir", default=None, help=argparse.SUPPRESS)
    add_data_args(p)
    add_augment_args(p)
    add_amp_args(p)
    add_space_args(p, classes_default=None)
    add_launcher_args(p)
    add_plugin_arg(p)
    add_config_arg(p, "supernet/main.py")
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other flags, and flags that do not go together.
    (Numeric ranges are checked while parsing: the utils.cli.common types above.)"""
    if args.epochs is None:
        args.epochs = EPOCHS_SPOS if args.train_all else EPOCHS_BN_NAS
    if args.train_all and (args.bn_params != "indicator" or args.train_classifier):
        raise UserError("--bn-params and --train-classifier choose what a BN-only supernet "
                        "trains; with --train-all every parameter trains already")
    return args


__all__ = ["build_parser", "check_args", "EPOCHS_BN_NAS", "EPOCHS_SPOS"]
