#!/usr/bin/env python3
"""Ranking study: does the BN indicator rank subnets as their trained accuracy does?

    python3 tools/ranking_study.py --report-dir docs/ranking   # the committed study
    python3 tools/ranking_study.py --quick --out /tmp/q         # tiny settings (CI)

Pilots the ground truth's budget (seed-to-seed tau against cost), trains 30
architectures in two FLOPs strata from scratch twice, trains BN-only supernets (the
original's trainable set and ablations) and a SPOS supernet with snapshots, and reports
Kendall tau / Spearman rho with bootstrap 95% intervals of the BN indicator at each
snapshot, SPOS accuracy, FLOPs, params, random and the zero-cost proxies synflow,
NASWOT, grad-norm and SNIP, with a conclusion by a rule fixed in advance
(utils/study/ranking.py: RULE). Every result is a small JSON file in --report-dir,
written as it is finished: rerun the same command to resume, on this machine or on a
fresh clone (the results found there are not recomputed).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time


from utils.files import check_output_dir
from utils.cli.common import (INPUT_SIZE_RANGE, WIDTH_MULT_MAX, ArgumentParser,
                       UserError, batch_size_int, finite_float, fraction, int_range,
                       main_guard, nonneg_float, nonneg_int, positive_int, seed_int,
                       workers_int)
from utils.flops.limits import parse_limit
from utils.spaces import SPACES
from utils.study.ranking import (RunOptions, StudySettings, run_study,
                                 summary_lines)

# --quick: a few subnets, tiny budgets and data (CI checks the plumbing, not the result).
QUICK = dict(input_size=16, width_mult=0.25, train_per_class=20, val_per_class=10,
             holdout_per_class=4, supernet_batch=16, bn_snapshots="3,6", spos_snapshots="3,6",
             subnets_under=3, subnets_over=3, pilot_every=2, pilot_budgets="6,10",
             subnet_batch=16, subnet_lr=0.2, truth_seeds=2, spos_bn_batches=2, spos_batch=16,
             spos_val_images=40, proxy_batch=8, ablations="all")
QUICK_BOOTSTRAP = 200


# Parse-time checks of the numeric settings (utils.cli.argtypes: finite, in range, one line);
# StudySettings.check() then checks how they fit together.
_COUNT = int_range(0, 10 ** 6)
TYPES = {
    "train_per_class": positive_int, "val_per_class": positive_int,
    "holdout_per_class": nonneg_int, "min_scale": finite_float(0.0, 1.0, lo_open=True),
    "lighting": nonneg_float, "input_size": int_range(*INPUT_SIZE_RANGE),
    "width_mult": finite_float(0.0, WIDTH_MULT_MAX, lo_open=True),
    "supernet_batch": batch_size_int, "bn_lr": nonneg_float, "spos_lr": nonneg_float,
    "subnets_under": _COUNT, "subnets_over": _COUNT, "pilot_every": positive_int,
    "tau_target": finite_float(-1.0, 1.0), "subnet_iters": positive_int,
    "subnet_batch": batch_size_int, "subnet_lr": nonneg_float, "subnet_dropout": fraction,
    "truth_seeds": int_range(1, 1000), "truth_hours": finite_float(0.0, lo_open=True), "flops_limit": finite_float(0.0, lo_open=True),
    "spos_bn_batches": positive_int, "spos_batch": batch_size_int,
    "spos_val_images": positive_int, "proxy_batch": batch_size_int, "seed": seed_int,
}


def _setting(group, name: str, help: str | None = None, **kw) -> None:
    """--name, with its default (and type) from StudySettings' field of the same name."""
    field = name.replace("-", "_")
    default = getattr(StudySettings(), field)
    if field in TYPES:
        kw["type"] = TYPES[field]
    elif default is not None:
        kw.setdefault("type", type(default))
    group.add_argument(f"--{name}", default=default, help=help, **kw)


def build_parser() -> argparse.ArgumentParser:
    d = StudySettings()
    p = ArgumentParser(
        description="Rank-correlation study of the BN indicator against SPOS scoring, FLOPs, "
                    "params, random and zero-cost proxies, with subnets trained from scratch "
                    "as the ground truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "ranking_study"),
                   help="work folder: data, checkpoints, logs (not needed once the results "
                        "are in --report-dir)")
    p.add_argument("--report-dir", dest="report_dir", default=None,
                   help="results (small JSON, committed), ranking.json and the plots "
                        "(default: <out>/report)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings: 6 subnets, 4-iteration supernets, 12 images per "
                        "class, width 0.25 (flags given explicitly still win)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="an ImageFolder root with train/ and val/ (default: Fashion-MNIST "
                        "written into <out>/data by tools/demo_data.py)")
    g.add_argument("--source", choices=["auto", "debian", "slice"], default=d.source,
                   help="Fashion-MNIST source: auto = the full Debian dataset-fashion-mnist "
                        "when installed, else the committed slice")
    _setting(g, "train-per-class", type=int, help="default: all")
    _setting(g, "val-per-class", type=int, help="default: all")
    _setting(g, "holdout-per-class", help="training images per class held out for SPOS "
                                          "scoring (0: score on the test set, flagged)")
    _setting(g, "min-scale", help="random-resized-crop minimum area, every training stage "
                                  "(the ImageNet recipe's is 0.08)")
    _setting(g, "lighting", help="PCA lighting noise std, every training stage "
                                 "(ImageNet recipe: 0.1)")
    g = p.add_argument_group("space (default: mobilenet at 28x28, width 0.35: CPU-sized)")
    g.add_argument("--space", choices=SPACES.names(), default=d.space)
    _setting(g, "input-size")
    _setting(g, "width-mult")
    g.add_argument("--stem-stride", type=int, choices=[1, 2], default=d.stem_stride)
    g.add_argument("--fixed-skips", default=d.fixed_skips,
                   help="layers forced to skip (default: the space's)")
    g = p.add_argument_group("supernets")
    _setting(g, "supernet-batch")
    _setting(g, "bn-snapshots", help="iterations at which the BN-only supernets are scored "
                                     "(the last is the run's length)")
    _setting(g, "bn-lr", help="LR of the BN-only supernets (the original's)")
    _setting(g, "ablations", help="BN-only variants trained besides the original "
                                  "(comma list of: all, indicator+classifier, "
                                  "all+classifier; empty: none)")
    _setting(g, "spos-snapshots", help="iterations at which the SPOS supernet is scored")
    _setting(g, "spos-lr", help="LR of the SPOS supernet (0.25 diverges at batch 64 here)")
    g = p.add_argument_group("architectures and ground truth (training from scratch)")
    _setting(g, "subnets-under", help="architectures under the FLOPs limit")
    _setting(g, "subnets-over", help="architectures over it (up to the costliest)")
    _setting(g, "pilot-every", help="the pilot trains every k-th architecture (FLOPs order)")
    _setting(g, "pilot-budgets", help="training iterations tried by the pilot")
    _setting(g, "tau-target", help="seed-to-seed tau the ground truth must reach")
    _setting(g, "subnet-iters", type=int,
             help="ground-truth iterations (default: the pilot's choice)")
    _setting(g, "subnet-batch")
    _setting(g, "subnet-lr")
    _setting(g, "subnet-dropout")
    _setting(g, "truth-seeds", help="trainings per subnet (seeds --seed, --seed+1, ...)")
    _setting(g, "truth-hours", help="training hours the ground truth may cost when no pilot "
                                    "budget reaches --tau-target: the most repeatable budget "
                                    "that fits is chosen")
    _setting(g, "flops-limit", type=lambda v: parse_limit(v, "flops").millions,
             help="MFLOPs; a number >= 1e5 is multiply-adds, as in search/ea.py (default: "
                  "the search's default limit for this config)")
    g = p.add_argument_group("SPOS accuracy scoring and zero-cost proxies")
    _setting(g, "spos-bn-batches", help="training batches for BN recalibration")
    _setting(g, "spos-batch")
    _setting(g, "spos-val-images", help="held-out images scored per candidate")
    _setting(g, "proxy-batch", help="images in the zero-cost proxies' fixed batch")
    g = p.add_argument_group("run")
    _setting(g, "seed")
    g.add_argument("--bootstrap", type=int_range(1, 10 ** 7), default=None,
                   help="bootstrap resamples (default 2000; 200 with --quick)")
    g.add_argument("--parallel", type=int_range(1, 256), default=2,
                   help="training processes at once (one per core)")
    g.add_argument("--threads", type=int_range(1, 256), default=1,
                   help="torch threads per process")
    g.add_argument("--workers", type=workers_int, default=1,
                   help="data loader processes per stage")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="device of every stage (one process each)")
    g.add_argument("--report-now", action="store_true",
                   help="train nothing: report from the results on record (a supernet short "
                        "of its last snapshot is reported as far as it got, marked "
                        "unfinished; the pilot and the ground truth must be complete)")
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
    check_output_dir(args.out, "--out")  # before any work
    if args.report_dir is not None:
        check_output_dir(args.report_dir, "--report-dir")
    bootstrap = args.bootstrap or (QUICK_BOOTSTRAP if args.quick else 2000)
    if bootstrap < 1 or args.threads < 1 or args.parallel < 1 or args.workers < 0:
        raise UserError("--bootstrap, --threads and --parallel must be >= 1, --workers >= 0")
    opts = RunOptions(out=args.out, report_dir=args.report_dir or os.path.join(args.out, "report"),
                      parallel=args.parallel, threads=args.threads, workers=args.workers,
                      bootstrap=bootstrap, device=args.device, report_now=args.report_now,
                      log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    t0 = time.perf_counter()
    report = run_study(settings, opts)
    for stratum in report["strata"]:
        print("\n" + "\n".join(summary_lines(report, stratum)))
    gt = report["ground_truth"]
    ag = gt.get("agreement")
    print(f"\nground truth: top-1 {gt['min']:.1f}-{gt['max']:.1f}% (mean {gt['mean']:.1f}) "
          f"after {gt['iters']} iterations, mean of {len(gt['seeds'])} seed(s)"
          + (f"; seed-to-seed tau {ag['tau']:+.3f} [{ag['tau_ci'][0]:+.2f}, "
             f"{ag['tau_ci'][1]:+.2f}]" if ag and ag["tau"] is not None else ""))
    for name, sv in report["supernets"].items():
        loss = "n/a" if sv["final_loss"] is None else f"{sv['final_loss']:.3f}"
        short = "" if sv["finished"] else (f", unfinished: {sv['trained_iters']} of "
                                           f"{sv['planned_snapshots'][-1]} iterations")
        print(f"supernet {name}: final training loss {loss} (chance {sv['chance_loss']:.3f})"
              f"{short}")
    for stratum, c in report["conclusion"]["strata"].items():
        print(f"conclusion ({stratum}): {c['verdict']}: {c['why']}")
    print(f"stages took {report['timing']['total_seconds']:.0f}s in all, this invocation "
          f"{time.perf_counter() - t0:.0f}s")
    print(f"wrote {os.path.join(opts.report_dir, 'ranking.json')}")
    for name in report["plots"]:
        print(f"wrote {os.path.join(opts.report_dir, name)}")


if __name__ == "__main__":
    main()
