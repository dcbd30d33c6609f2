#!/usr/bin/env python3
"""Ranking study: how well do the BN indicator and SPOS scoring rank subnets?

    python3 tools/ranking_study.py                       # the default study (~30-40 min, 2 CPUs)
    python3 tools/ranking_study.py --quick --out /tmp/q  # tiny settings (the CI test)

Trains a BN-only and a SPOS supernet (snapshot every epoch), trains N architectures
spread over the FLOPs range under the search limit from scratch (the ground truth), and
reports Kendall tau / Spearman rho (bootstrap 95% intervals) of the BN indicator at each
epoch, SPOS accuracy at each epoch, FLOPs, parameters and a random score. Writes
ranking.json and PNG plots to --report-dir. Rerun the same command to resume; finished
supernet epochs, subnets and SPOS scores are reused. Each stage's folder under --out is
named after the settings it depends on (e.g. subnets-1a2b3c4d/), so changing one stage's
flags reuses the others' results. Stage logs are in those folders.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from utils.cli import UserError, main_guard  # noqa: E402
from utils.ranking_study import (RunOptions, StudySettings, run_study,  # noqa: E402
                                 summary_lines)

# --quick: a few subnets, tiny budgets and data (CI checks the plumbing, not the result).
QUICK = dict(width_mult=0.25, train_per_class=10, val_per_class=10, bn_epochs=2, spos_epochs=2,
             supernet_batch=10, subnets=4, subnet_epochs=3, subnet_batch=10, subnet_lr=0.5,
             spos_bn_batches=2, spos_batch=10, spos_val_images=100)
QUICK_BOOTSTRAP = 200


def build_parser() -> argparse.ArgumentParser:
    d = StudySettings()
    p = argparse.ArgumentParser(
        description="Rank-correlation study of the BN indicator vs SPOS scoring, FLOPs, "
                    "params and random, against subnets trained from scratch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "ranking_study"),
                   help="study folder: data, supernets, subnets, caches, logs")
    p.add_argument("--report-dir", dest="report_dir", default=None,
                   help="where ranking.json and the plots go (default: <out>/report)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings: 4 subnets, 2+2 supernet epochs, 10 images per class, "
                        "width 0.25 (flags given explicitly still win)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="an ImageFolder root with train/ and val/ (default: Fashion-MNIST "
                        "written into <out>/data by utils/demo_data.py)")
    g.add_argument("--source", choices=["auto", "debian", "slice"], default=d.source,
                   help="Fashion-MNIST source: auto = the full Debian dataset-fashion-mnist "
                        "when installed, else the committed slice")
    g.add_argument("--train-per-class", type=int, default=d.train_per_class)
    g.add_argument("--val-per-class", type=int, default=d.val_per_class)
    g = p.add_argument_group("space (default: the demo config)")
    g.add_argument("--space", choices=["mobilenet", "shufflenet"], default=d.space)
    g.add_argument("--input-size", type=int, default=d.input_size)
    g.add_argument("--width-mult", type=float, default=d.width_mult)
    g.add_argument("--stem-stride", type=int, choices=[1, 2], default=d.stem_stride)
    g.add_argument("--fixed-skips", default=d.fixed_skips,
                   help="layers forced to skip (default: the space's)")
    g = p.add_argument_group("supernets")
    g.add_argument("--bn-epochs", type=int, default=d.bn_epochs,
                   help="BN-only supernet epochs (one snapshot per epoch)")
    g.add_argument("--spos-epochs", type=int, default=d.spos_epochs,
                   help="SPOS (--train-all) supernet epochs (one snapshot per epoch)")
    g.add_argument("--supernet-batch", type=int, default=d.supernet_batch)
    g.add_argument("--supernet-lr", type=float, default=d.supernet_lr)
    g = p.add_argument_group("ground truth (training from scratch)")
    g.add_argument("--subnets", type=int, default=d.subnets, help="architectures sampled")
    g.add_argument("--subnet-epochs", type=int, default=d.subnet_epochs)
    g.add_argument("--subnet-batch", type=int, default=d.subnet_batch)
    g.add_argument("--subnet-lr", type=float, default=d.subnet_lr)
    g.add_argument("--flops-limit", type=float, default=d.flops_limit,
                   help="MFLOPs (default: the search's default limit for this config)")
    g = p.add_argument_group("SPOS accuracy scoring")
    g.add_argument("--spos-bn-batches", type=int, default=d.spos_bn_batches,
                   help="training batches for BN recalibration")
    g.add_argument("--spos-batch", type=int, default=d.spos_batch)
    g.add_argument("--spos-val-images", type=int, default=d.spos_val_images,
                   help="size of the fixed validation subset")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap resamples (default 2000; 200 with --quick)")
    g.add_argument("--threads", type=int, default=2, help="torch threads per stage")
    g.add_argument("--workers", type=int, default=1, help="data loader processes per stage")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="device of every stage (one process each)")
    return p


def settings_from_args(args: argparse.Namespace, argv: list[str]) -> StudySettings:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(StudySettings)}
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv
                 if a.startswith("--")}
        values.update({k: v for k, v in QUICK.items() if k not in given})
    return StudySettings(**values)


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # main_guard: "interrupted", exit 130; the stage saves first


@main_guard
def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args, argv)
    bootstrap = args.bootstrap or (QUICK_BOOTSTRAP if args.quick else 2000)
    if bootstrap < 1 or args.threads < 1 or args.workers < 0:
        raise UserError("--bootstrap and --threads must be >= 1, --workers >= 0")
    opts = RunOptions(out=args.out, report_dir=args.report_dir or os.path.join(args.out, "report"),
                      threads=args.threads, workers=args.workers, bootstrap=bootstrap,
                      device=args.device,
                      log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    t0 = time.perf_counter()
    report = run_study(settings, opts)
    print("\n" + "\n".join(summary_lines(report)))
    gt = report["ground_truth"]
    print(f"\nground truth: top-1 {gt['min']:.1f}-{gt['max']:.1f}% (mean {gt['mean']:.1f}) "
          f"after {gt['epochs']} epochs; stages took {report['timing']['stage_total_seconds']:.0f}s "
          f"in all, this invocation {time.perf_counter() - t0:.0f}s")
    print(f"wrote {os.path.join(opts.report_dir, 'ranking.json')}")
    for name in report["plots"]:
        print(f"wrote {os.path.join(opts.report_dir, name)}")


if __name__ == "__main__":
    main()
