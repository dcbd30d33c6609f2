#!/usr/bin/env python3
"""BN-NAS search (stage 2): evolutionary and/or exact search under a FLOPs limit.

    cd search && cp ../supernet/checkpoint.pth.tar . && python3 ea.py

Reads ./checkpoint.pth.tar (ours, or a reference BN-NAS supernet), writes
log/ea_results.pth.tar and log/ea_results.json; rerun the same command to resume.
--flops-limit takes MFLOPs (475, 475M) or, as the reference, multiply-adds (475e6).
`python3 ea.py -h` lists the flags; the logic lives in utils/search_run.py.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from utils.cli import main_guard  # noqa: E402
from utils.search_run import build_parser, run_search  # noqa: E402


@main_guard
def main(argv=None) -> None:
    run_search(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
