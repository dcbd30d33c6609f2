#!/usr/bin/env python3
"""BN-NAS search (stage 2): evolutionary and/or exact search under a FLOPs limit.

    cd search && cp ../supernet/checkpoint.pth.tar . && python3 ea.py

Reads ./checkpoint.pth.tar (ours, or a reference BN-NAS supernet), writes
log/ea_results.pth.tar and log/ea_results.json; rerun the same command to resume.
--flops-limit takes MFLOPs (475, 475M) or, as the reference, multiply-adds (475e6).
--score picks the scorer (utils/search/scorers.py; --plugin FILE.py can register more).
`python3 ea.py -h` lists the flags; the logic lives in utils/search/run.py.
"""
from utils.cli.common import main_guard
from utils.plugins import load_plugins_from_argv
from utils.search.run import build_parser, run_search


@main_guard
def main(argv=None) -> None:
    load_plugins_from_argv(argv)  # first: a plug-in's scorer must be a --score choice
    run_search(build_parser().parse_args(argv))  # build_parser adds --plugin


if __name__ == "__main__":
    main()
