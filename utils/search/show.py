"""What `search/eval.py` does: print a search log's best architectures (and plot it).

Every logged candidate plus the exact optimum, deduplicated, best score first (the
ranking of `utils.search.log.ranked`): the architecture string (ready for retrain's
--model_id), score, FLOPs and params; for an original SPOS log the score is top-1 % and
top-5 % is shown too. The score's name comes from the log's scorer
(`utils.search.scorers.scorer_class(score_kind)`), as does whether the BN indicator's
per-layer spread is reported. `--plot` draws the log (utils.plots.figures).
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.cli.common import ArgumentParser, UserError, positive_int
from utils.cli.config_file import add_config_arg
from utils.files import dumps_json
from utils.logs import get_logger
from utils.plugins import add_plugin_arg
from utils.search.log import load_log, ranked
from utils.search.scorers import scorer_class

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Print the top architectures of a search log.")
    p.add_argument("--log-dir", "--log_dir", dest="log_dir", default="log",
                   help="search log folder (or a log file) (default: log)")
    p.add_argument("--topk", type=positive_int, default=10, help="how many to show (default: 10)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: {config, score_kind, flops_limit, top: [...]}")
    p.add_argument("--plot", action="store_true",
                   help="also draw the log: best/mean score per generation, FLOPs vs score "
                        "with the Pareto front, the indicator heatmap (PNGs)")
    p.add_argument("--plot-dir", "--plot_dir", dest="plot_dir", default=None,
                   help="where --plot writes (default: the log folder)")
    add_plugin_arg(p)
    add_config_arg(p, "search/eval.py")
    return p


def _m(x) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}M"


def show(args: argparse.Namespace) -> None:
    result = load_log(args.log_dir)
    top = ranked(result)[:args.topk]
    for c in top:
        c["arch_str"] = " ".join(map(str, c["arch"]))
    diag = diagnostics(result)
    plots, notes = plot(args, result) if args.plot else ([], [])
    if args.json:
        sys.stdout.write(dumps_json(dict(
            log_dir=args.log_dir, source=result.get("source"), config=result.get("config"),
            score_kind=result.get("score_kind"), flops_limit=result.get("flops_limit"),
            top=top, **({"score_note": result["score_note"]} if "score_note" in result else {}),
            indicator_diagnostics=diag, **(dict(plots=plots) if args.plot else {}))) + "\n")
        sys.stdout.flush()
        return
    what = result.get("score_note") or scorer_class(result.get("score_kind")).label
    top5 = any(c.get("top5") is not None for c in top)  # an original SPOS log
    log.info(f"{args.log_dir}: {len(result.get('candidates') or [])} candidates "
             f"({what}; source {result.get('source')})")
    if not top:
        log.info("no scored candidates")
    else:
        log.info(f"{'#':>3}  {'architecture (--model_id)':<{max(len(c['arch_str']) for c in top)}}"
                 f"  {'score':>9}  " + (f"{'top-5':>9}  " if top5 else "")
                 + f"{'FLOPs':>9}  {'params':>7}  found by")
    for i, c in enumerate(top):
        gen = "" if c.get("generation") is None else f" (gen {c['generation']})"
        t5 = "" if not top5 else ("-" if c.get("top5") is None else f"{c['top5']:.4f}")
        log.info(f"{i + 1:>3}  {c['arch_str']}  {c['score']:>9.4f}  "
                 + (f"{t5:>9}  " if top5 else "")
                 + f"{_m(c.get('flops')):>9}  {_m(c.get('params')):>7}  {c['found_by']}{gen}")
    if diag is not None:
        from utils.search.diagnostics import spread_lines
        from utils.spaces import SpaceConfig, get_space
        for line in spread_lines(get_space(SpaceConfig.from_dict(result["config"])), diag):
            log.info(line)
    for note in notes:
        log.info(f"note: {note}")
    for path in plots:
        log.info(f"plot: {path}")


def diagnostics(result: dict) -> dict | None:
    """Per-layer indicator spread of a log whose scorer it judges (and that holds the
    indicator: this project's logs)."""
    if not scorer_class(result.get("score_kind")).bn_diagnostics \
            or not result.get("indicator") or not result.get("config"):
        return None
    import numpy as np
    from utils.search.diagnostics import diagnose
    from utils.spaces import SpaceConfig, get_space
    space = get_space(SpaceConfig.from_dict(result["config"]))
    return diagnose(space, np.asarray(result["indicator"], dtype=np.float64))


def plot(args: argparse.Namespace, result: dict) -> tuple[list[str], list[str]]:
    from utils.plots.figures import plot_search_log  # matplotlib only when asked for
    log_dir = args.log_dir if os.path.isdir(args.log_dir) else os.path.dirname(
        os.path.abspath(args.log_dir))
    out = args.plot_dir or log_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--plot-dir {out} exists and is not a folder")
    return plot_search_log(result, out)
