"""Export a retrained subnet: ONNX, TorchScript and an architecture card (arch.json).

    python3 retrain/export.py --checkpoint eval-retrain/best.pth.tar --out exported/
    python3 retrain/export.py --checkpoint original_retrained.pth.tar --out exported/ \
        --model_id "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"
    # no checkpoint: a random init, to try the export
    python3 retrain/export.py --model_id "..." --input-size 32 --classes 10 --out /tmp/try
    # a search space of your own (docs/examples/toy_space.py)
    python3 retrain/export.py --plugin my_space.py --space toy --input-size 32 --out /tmp/toy

Writes DIR/model.onnx, DIR/model.ts.pt and DIR/arch.json once ONNX Runtime and TorchScript
agree with the PyTorch model on a random batch (utils/export/writers.py). Needs onnx and
onnxruntime (pip install -r requirements-export.txt).
"""
from __future__ import annotations

import argparse
import os
import sys


from utils.cli.common import (ArgumentParser, add_space_args, finite_float, int_range, main_guard,
                       seed_int)
from utils.cli.config_file import add_config_arg
from utils.checkpoints.subnet import unset_space_defaults
from utils.logs import get_logger
from utils.plugins import add_plugin_arg, load_plugins_from_argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from utils.export.writers import OPSET
    load_plugins_from_argv(argv)  # before the parser: --space offers the plug-ins' spaces
    p = ArgumentParser(
        description="Export a retrained BN-NAS subnet to ONNX and TorchScript, with an "
                    "architecture card (arch.json).",
        epilog="Space flags and the architecture not given come from the checkpoint (this "
               "project's); the original release's checkpoints are the ImageNet mobilenet "
               "space and default to the published architecture. Without --checkpoint the "
               "weights are a random init.")
    p.add_argument("--checkpoint", default=None,
                   help="eval-NAME/best.pth.tar (this project's) or the original's retrained "
                        "checkpoint")
    p.add_argument("--model_id", "--model-id", dest="model_id", default=None,
                   help='architecture, e.g. "3 -1 0 4 ..." (default: the checkpoint\'s, '
                        "else the space's published one)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; files in it are replaced)")
    p.add_argument("--batch", type=int_range(1, 256), default=4,
                   help="size of the random batch the outputs are checked on (default: 4)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of that batch (default: 0)")
    p.add_argument("--atol", type=finite_float(0.0, 1.0), default=1e-4,
                   help="largest max-abs logit difference accepted (default: 1e-4)")
    p.add_argument("--opset", type=int_range(9, 30), default=OPSET,
                   help=f"ONNX opset (default: {OPSET})")
    from utils.data.loaders import add_dataset_arg, add_val_crop_arg
    add_dataset_arg(p, default=None,
                    help="the dataset whose mean/std the card gives for rgb input (default: "
                         "the checkpoint's, else imagefolder: ImageNet's)")
    add_val_crop_arg(p, default=None)
    add_space_args(p, classes_default=None)
    unset_space_defaults(p)
    add_plugin_arg(p)
    add_config_arg(p, "retrain/export.py")
    return p.parse_args(argv)

log = get_logger("export")


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from utils.export.writers import check_out_dir, export_subnet, require_dependencies
    from utils.export.hub import CONFIG_KEYS, build_subnet
    require_dependencies()
    check_out_dir(args.out)
    loaded = build_subnet(space=args.space, arch=args.model_id, checkpoint=args.checkpoint,
                          dataset=args.dataset, crop_pct=args.val_crop_pct,
                          **{k: getattr(args, k) for k in CONFIG_KEYS})
    what = (f"{loaded.kind} checkpoint {loaded.checkpoint}" if loaded.checkpoint else
            "random init (no --checkpoint)")
    from utils.train.retrain_outputs import data_note
    log.info(f"architecture: {loaded.space.format(loaded.arch)} ({loaded.arch_source})\n"
             f"space: {loaded.config.describe()}\nweights: {what}; input {loaded.input_format}"
             f"{data_note(loaded.dataset, loaded.crop_pct)}")
    report = export_subnet(loaded, args.out, batch=args.batch, seed=args.seed,
                           atol=args.atol, opset=args.opset)
    card = report.card
    log.info(f"FLOPs {card['flops'] / 1e6:.2f}M, params {card['params'] / 1e6:.2f}M; "
             f"wrote {', '.join(os.path.join(report.out_dir, f) for f in report.files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
