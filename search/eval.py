#!/usr/bin/env python3
"""Show a search log's best architectures (stage 2, step 3.5 of the reference README).

    cd search && python3 eval.py [--log-dir log] [--topk 10] [--json] [--plot [--plot-dir D]]

Reads log/ea_results.json (or ea_results.pth.tar, ours or the reference release's, BN-NAS
or SPOS) and prints every logged candidate plus the exact optimum, deduplicated, best
score first: the architecture string (ready for retrain's --model_id), score, FLOPs and
params; for an original SPOS log the score is top-1 % and top-5 % is shown too.
The first line is what retrain's --arch-from LOG_DIR picks (utils.search.log.best_arch).
--plot also draws the log (utils.plots.figures.plot_search_log) into the log folder or --plot-dir.
"""
import os


from utils.files import dumps_json
from utils.cli.common import ArgumentParser, UserError, main_guard, positive_int
from utils.cli.config_file import add_config_arg
from utils.search.log import load_log, ranked


def _m(x) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}M"


@main_guard
def main(argv=None) -> None:
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
    add_config_arg(p, "search/eval.py")
    args = p.parse_args(argv)
    log = load_log(args.log_dir)
    top = ranked(log)[:args.topk]
    for c in top:
        c["arch_str"] = " ".join(map(str, c["arch"]))
    diag = _diagnostics(log)
    plots, notes = _plot(args, log) if args.plot else ([], [])
    if args.json:
        print(dumps_json(dict(log_dir=args.log_dir, source=log.get("source"),
                              config=log.get("config"), score_kind=log.get("score_kind"),
                              flops_limit=log.get("flops_limit"), top=top,
                              **({"score_note": log["score_note"]} if "score_note" in log
                                 else {}),
                              indicator_diagnostics=diag,
                              **(dict(plots=plots) if args.plot else {}))))
        return
    kind = log.get("score_kind")
    what = log.get("score_note") or {"indicator": "BN indicator",
                                     "accuracy": "top-1 %"}.get(kind, "score")
    top5 = any(c.get("top5") is not None for c in top)  # an original SPOS log
    print(f"{args.log_dir}: {len(log.get('candidates') or [])} candidates "
          f"({what}; source {log.get('source')})")
    if not top:
        print("no scored candidates")
    else:
        print(f"{'#':>3}  {'architecture (--model_id)':<{max(len(c['arch_str']) for c in top)}}  "
              f"{'score':>9}  " + (f"{'top-5':>9}  " if top5 else "")
              + f"{'FLOPs':>9}  {'params':>7}  found by")
    for i, c in enumerate(top):
        gen = "" if c.get("generation") is None else f" (gen {c['generation']})"
        t5 = "" if not top5 else ("-" if c.get("top5") is None else f"{c['top5']:.4f}")
        print(f"{i + 1:>3}  {c['arch_str']}  {c['score']:>9.4f}  "
              + (f"{t5:>9}  " if top5 else "")
              + f"{_m(c.get('flops')):>9}  {_m(c.get('params')):>7}  {c['found_by']}{gen}")
    if diag is not None:
        from utils.search.diagnostics import spread_lines
        from utils.spaces import SpaceConfig, get_space
        for line in spread_lines(get_space(SpaceConfig.from_dict(log["config"])), diag):
            print(line)
    for note in notes:
        print(f"note: {note}")
    for path in plots:
        print(f"plot: {path}")


def _diagnostics(log: dict) -> dict | None:
    """Per-layer indicator spread of a log that holds the indicator (this project's)."""
    if log.get("score_kind") != "indicator" or not log.get("indicator") or not log.get("config"):
        return None
    import numpy as np
    from utils.search.diagnostics import diagnose
    from utils.spaces import SpaceConfig, get_space
    space = get_space(SpaceConfig.from_dict(log["config"]))
    return diagnose(space, np.asarray(log["indicator"], dtype=np.float64))


def _plot(args, log: dict) -> tuple[list[str], list[str]]:
    from utils.plots.figures import plot_search_log  # matplotlib only when asked for
    log_dir = args.log_dir if os.path.isdir(args.log_dir) else os.path.dirname(
        os.path.abspath(args.log_dir))
    out = args.plot_dir or log_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--plot-dir {out} exists and is not a folder")
    return plot_search_log(log, out)


if __name__ == "__main__":
    main()
