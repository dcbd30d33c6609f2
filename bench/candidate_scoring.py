#!/usr/bin/env python3
"""Benchmark: BN-indicator scoring vs SPOS accuracy scoring, and search wall times.

    python3 bench/candidate_scoring.py              # demo config, data made on the fly
    python3 bench/candidate_scoring.py --data data/imagefolder --json

Measures, on one supernet and one data set (default: mobilenet 32x32, 10 classes, a
small Fashion-MNIST ImageFolder written to a temp folder):
* per-candidate time of the BN indicator (one architecture per call, as the reference
  scores) and of SPOS scoring (BN recalibration on --bn-batches training batches + top-1
  on --val-images validation images), and their ratio (the paper reports > 600,000x at
  ImageNet scale, where SPOS needs 200 batches of 128 at 224x224 per candidate);
* indicator throughput (candidates/s) for batches of architectures: one numpy gather
  over an [N, layers] int array;
* wall time of a full default EA (20 generations, population 50) and of the exact search,
  on this config and on the ImageNet mobilenet/shufflenet spaces.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


import numpy as np
import torch

from utils.search import indicator
from utils.cli.common import UserError, add_space_args, config_from_args, main_guard
from utils.search.evolution import ChoiceSampler, EASettings, Evolution
from utils.search.exact import solve
from utils.flops.table import load_table
from utils.flops.limits import default_flops_limit
from utils.spaces import IMAGENET, get_space, make_config
from utils.search.spos import SposScorer
from utils.logs import get_logger, setup_logging

log = get_logger(__name__)


def _best_of(fn, repeats: int) -> float:
    """Smallest wall time of `repeats` calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def search_times(cfg, matrix: np.ndarray | None = None, seed: int = 0) -> dict:
    """Wall time of a default EA and of the exact search on `cfg` (indicator scoring)."""
    space, table = get_space(cfg), load_table(cfg)
    if matrix is None:  # a plausible indicator: positive per-op means, zero for skip
        matrix = np.random.default_rng(seed).uniform(0.2, 1.0, (space.num_layers,
                                                                space.num_ops + 1))
        matrix[:, -1] = 0.0
    limit = default_flops_limit(cfg)[0] * 1e6

    def costs(a):
        return table.flops_of(a), table.params_of(a)

    t0 = time.perf_counter()
    ea = Evolution(space, EASettings(seed=seed), lambda a: indicator.score(matrix, a), costs,
                   limit, log=lambda msg: None)
    ea.run()
    ea_s = time.perf_counter() - t0
    best = ea.best()
    res = solve(matrix, table.flops, space.allowed_mask(), limit, base_flops=table.base_flops)
    exact_s = _best_of(lambda: solve(matrix, table.flops, space.allowed_mask(), limit,
                                     base_flops=table.base_flops), 5)
    return dict(config=cfg.describe(), flops_limit_m=limit / 1e6, ea_seconds=ea_s,
                ea_candidates=len(ea.vis_dict), ea_best=best[1]["score"],
                exact_seconds=exact_s, exact_score=res.score, exact_front=res.max_front)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))
    cfg = config_from_args(args)
    space = get_space(cfg)
    net = space.supernet()
    # A "trained" look: indicator gammas of varying size, so scores differ per op.
    g = torch.Generator().manual_seed(args.seed)
    for row in space.indicator_modules(net):
        for bn in row:
            bn.weight.data.uniform_(0.05, 1.0, generator=g)
    state = net.state_dict()
    matrix = indicator.indicator_matrix(space, state)
    sampler = ChoiceSampler(space)
    rng = np.random.default_rng(args.seed)

    # ---- indicator: one candidate per call, and throughput over batches -------------
    singles = sampler.draw(rng, 2000)
    per_call = _best_of(lambda: [indicator.score(matrix, a) for a in singles], 3) / len(singles)
    throughput = {}
    for n in args.batch_archs:
        batch = sampler.draw(rng, n)
        t = _best_of(lambda: indicator.score(matrix, batch), 3 if n <= 100_000 else 2)
        throughput[str(n)] = n / t
    batched_per = 1.0 / max(throughput.values())

    # ---- SPOS: recalibrate BN + validate, same supernet --------------------------------
    tmp = None
    data = args.data
    if data is None:
        from utils.data.demo import write_tree
        tmp = tempfile.TemporaryDirectory(prefix="bnnas-bench-")
        data = os.path.join(tmp.name, "data")
        per_train = -(-args.bn_batches * args.batch_size // cfg.classes)
        write_tree(data, size=cfg.input_size, train_per_class=per_train,
                   val_per_class=-(-args.val_images // cfg.classes), seed=args.seed)
    try:
        scorer = SposScorer(space, state, os.path.join(data, "train"), os.path.join(data, "val"),
                            bn_batches=args.bn_batches, batch_size=args.batch_size,
                            val_images=args.val_images, device=args.device, seed=args.seed,
                            workers=args.workers, log=lambda m: None)
        archs = sampler.draw(rng, args.candidates)
        with torch.no_grad():  # warm-up (allocator, kernels), not timed
            x, _ = next(scorer._batches(scorer.val_x, scorer.val_y))
            scorer.net.eval()
            scorer.net(x, tuple(archs[0]))
        accs = [scorer.score_one(a) for a in archs]
        spos_per = float(np.median(scorer.seconds))
    finally:
        if tmp is not None:
            tmp.cleanup()

    out = dict(
        config=cfg.describe(), device=str(scorer.device), threads=torch.get_num_threads(),
        spos=dict(bn_batches=scorer.bn_batches, batch_size=args.batch_size,
                  val_images=scorer.val_images, candidates=len(archs),
                  seconds_per_candidate=spos_per, preload_seconds=scorer.preload_seconds,
                  accuracies=accs),
        indicator=dict(seconds_per_candidate=per_call,
                       seconds_per_candidate_batched=batched_per,
                       candidates_per_second=throughput),
        ratio=spos_per / per_call, ratio_batched=spos_per / batched_per,
        search=dict(this_config=search_times(cfg, matrix, args.seed)))
    if not args.skip_imagenet:
        for name in ("mobilenet", "shufflenet"):
            out["search"][f"{name}_imagenet"] = search_times(make_config(name, **IMAGENET),
                                                             seed=args.seed)
    return out


def print_table(r: dict) -> None:
    s, ind = r["spos"], r["indicator"]
    log.info(f"config: {r['config']}; device {r['device']}, {r['threads']} threads")
    log.info(f"\nper-candidate scoring time")
    log.info(f"  {'BN indicator (one arch per call)':<46} {ind['seconds_per_candidate'] * 1e6:>12.2f} us")
    log.info(f"  {'BN indicator (batched, best batch size)':<46} "
          f"{ind['seconds_per_candidate_batched'] * 1e9:>12.2f} ns")
    log.info(f"  {'SPOS: BN recalib. %d x %d imgs + top-1 on %d' % (s['bn_batches'], s['batch_size'], s['val_images']):<46} "
          f"{s['seconds_per_candidate'] * 1e3:>12.1f} ms")
    log.info(f"  ratio SPOS / indicator: {r['ratio']:,.0f}x (one per call), "
          f"{r['ratio_batched']:,.0f}x (batched)   [paper: > 600,000x at ImageNet scale]")
    log.info(f"\nindicator throughput (numpy gather over [N, layers])")
    for n, v in ind["candidates_per_second"].items():
        log.info(f"  N = {int(n):>9,}: {v:>16,.0f} candidates/s")
    log.info(f"\nsearch wall time (indicator scoring; default EA = 20 generations x 50)")
    w = max(len(v["config"]) for v in r["search"].values())
    log.info(f"  {'space':<{w}} {'FLOPs lim':>9} {'EA':>9} {'exact':>9} {'EA best':>9} {'optimum':>9}")
    for v in r["search"].values():
        log.info(f"  {v['config']:<{w}} {v['flops_limit_m']:>8.1f}M {v['ea_seconds']:>8.3f}s "
              f"{v['exact_seconds'] * 1e3:>7.2f}ms {v['ea_best']:>9.4f} {v['exact_score']:>9.4f}")


@main_guard
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_space_args(p, classes_default=10)
    p.set_defaults(input_size=32)  # the demo config
    p.add_argument("--data", default=None,
                   help="ImageFolder root with train/ and val/ (default: write a small "
                        "Fashion-MNIST one to a temp folder)")
    # Small SPOS defaults so the whole bench stays within minutes on a 2-core CPU; the
    # SPOS time grows linearly with the image count, the indicator's does not at all.
    p.add_argument("--bn-batches", type=int, default=4, help="BN recalibration batches")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-images", type=int, default=128)
    p.add_argument("--candidates", type=int, default=2, help="SPOS-scored candidates (timed)")
    p.add_argument("--batch-archs", type=int, nargs="+", default=[1, 1000, 100_000, 1_000_000],
                   help="batch sizes for the indicator throughput")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-imagenet", action="store_true",
                   help="time the searches on this config only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if min(args.batch_archs) < 1 or args.candidates < 1:
        raise UserError("--batch-archs and --candidates must be >= 1")
    setup_logging()
    r = run(args)
    if args.json:
        print(json.dumps(r))  # the data, on stdout as one line
    else:
        print_table(r)


if __name__ == "__main__":
    main()
