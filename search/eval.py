#!/usr/bin/env python3
"""Show a search log's best architectures (stage 2, step 3.5 of the reference README).

    cd search && python3 eval.py [--log-dir log] [--topk 10] [--json] [--plot [--plot-dir D]]

Reads log/ea_results.json (or ea_results.pth.tar, ours or the reference release's, BN-NAS
or SPOS) and prints every logged candidate plus the exact optimum, deduplicated, best
score first: the architecture string (ready for retrain's --model_id), score, FLOPs and
params; for an original SPOS log the score is top-1 % and top-5 % is shown too.
The first line is what retrain's --arch-from LOG_DIR picks (utils.search.log.best_arch).
--plot also draws the log (utils.plots.figures.plot_search_log) into the log folder or
--plot-dir; --plugin FILE.py loads the scorer of a log that a plug-in wrote. The logic
lives in utils/search/show.py.
"""
from utils.cli.common import main_guard
from utils.logs import setup_logging
from utils.plugins import load_plugins_from_argv
from utils.search.show import build_parser, show


@main_guard
def main(argv=None) -> None:
    load_plugins_from_argv(argv)  # first: a plug-in scorer's texts name its log's scores
    args = build_parser().parse_args(argv)  # build_parser adds --plugin
    setup_logging()
    show(args)


if __name__ == "__main__":
    main()
