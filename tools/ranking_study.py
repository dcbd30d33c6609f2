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
             truth_seeds=1,
             spos_bn_batches=2, spos_batch=10, spos_val_images=100)
QUICK_BOOTSTRAP = 200


def _setting(group, name: str, help: str | None = None, **kw) -> None:
    """--name, with its default (and type) from StudySettings' field of the same name."""
    default = getattr(StudySettings(), name.replace("-", "_"))
    kw.setdefault("type", type(default))
    group.add_argument(f"--{name}", default=default, help=help, **kw)


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
    _setting(g, "train-per-class", type=int)
    _setting(g, "val-per-class", type=int)
    _setting(g, "min-scale", help="random-resized-crop minimum area, both training stages "
                                  "(the demo's; SPEC's ImageNet recipe is 0.08)")
    _setting(g, "lighting", help="PCA lighting noise std, both training stages "
                                 "(ImageNet recipe: 0.1)")
    g = p.add_argument_group("space (default: mobilenet at 32x32, width 0.5: CPU-sized)")
    g.add_argument("--space", choices=["mobilenet", "shufflenet"], default=d.space)
    _setting(g, "input-size")
    _setting(g, "width-mult")
    g.add_argument("--stem-stride", type=int, choices=[1, 2], default=d.stem_stride)
    g.add_argument("--fixed-skips", default=d.fixed_skips,
                   help="layers forced to skip (default: the space's)")
    g = p.add_argument_group("supernets")
    _setting(g, "bn-epochs", help="BN-only supernet epochs (one snapshot per epoch)")
    _setting(g, "spos-epochs", help="SPOS (--train-all) supernet epochs (one snapshot each)")
    _setting(g, "supernet-batch")
    _setting(g, "bn-lr", help="LR of the BN-only supernet (the reference's)")
    _setting(g, "spos-lr", help="LR of the SPOS supernet (0.25 diverges at batch 64 here)")
    g = p.add_argument_group("ground truth (training from scratch)")
    _setting(g, "subnets", help="architectures sampled")
    _setting(g, "subnet-epochs")
    _setting(g, "subnet-batch")
    _setting(g, "subnet-lr")
    _setting(g, "subnet-dropout")
    _setting(g, "truth-seeds", help="trainings per subnet (seeds --seed, --seed+1, ...): the "
                                    "ground truth is their mean top-1, and seed 0 vs seed 1 "
                                    "measures its reliability")
    _setting(g, "flops-limit", type=float,
             help="MFLOPs (default: the search's default limit for this config)")
    g = p.add_argument_group("SPOS accuracy scoring")
    _setting(g, "spos-bn-batches", help="training batches for BN recalibration")
    _setting(g, "spos-batch")
    _setting(g, "spos-val-images", help="size of the fixed validation subset")
    g = p.add_argument_group("run")
    _setting(g, "seed")
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
    rel = gt.get("reliability")
    print(f"\nground truth: top-1 {gt['min']:.1f}-{gt['max']:.1f}% (mean {gt['mean']:.1f}) "
          f"after {gt['epochs']} epoch(s), mean of {len(gt['seeds'])} seed(s)"
          + (f"; seed-to-seed tau {rel['tau']:+.3f} [{rel['tau_ci'][0]:+.2f}, "
             f"{rel['tau_ci'][1]:+.2f}]" if rel and rel["tau"] is not None else "")
          + f"\nstages took {report['timing']['stage_total_seconds']:.0f}s in all, this "
            f"invocation {time.perf_counter() - t0:.0f}s")
    if gt.get("warning"):
        print(f"warning: {gt['warning']}")
    print(f"wrote {os.path.join(opts.report_dir, 'ranking.json')}")
    for name in report["plots"]:
        print(f"wrote {os.path.join(opts.report_dir, name)}")


if __name__ == "__main__":
    main()
