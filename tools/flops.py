#!/usr/bin/env python3
"""FLOPs and parameters of an architecture, or (re)build a space config's lookup table.

    python3 tools/flops.py --space mobilenet --arch "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"
    python3 tools/flops.py --space shufflenet --build --table-dir data/flops_tables

The tables themselves live in utils/flops/table.py.
"""
from __future__ import annotations

import json

from utils.flops.table import load_table, table_dir, table_path
from utils.plugins import add_plugin_arg, load_plugins_from_argv
from utils.spaces import get_space


def main(argv=None) -> None:
    from utils.cli.common import ArgumentParser, add_space_args, config_from_args, main_guard

    @main_guard
    def run():
        load_plugins_from_argv(argv)  # before the parser: --space choices include plug-ins
        p = ArgumentParser(description="FLOPs and parameters of a BN-NAS architecture.")
        add_plugin_arg(p)
        add_space_args(p)
        p.add_argument("--arch", required=False, help='op indices, e.g. "3 -1 0 4 ..." (-1 = skip)')
        p.add_argument("--json", action="store_true", help='print {"flops": int, "params": int}')
        p.add_argument("--build", action="store_true",
                       help="(re)build and save the lookup table of this config, then exit")
        p.add_argument("--table-dir", default=None,
                       help="table folder (default: data/flops_tables if the table is there, "
                            "else the cache $BNNAS_TABLE_DIR or ~/.cache/bnnas/flops_tables)")
        args = p.parse_args(argv)
        cfg = config_from_args(args)
        space = get_space(cfg)
        if args.build:
            table = load_table(cfg, args.table_dir, rebuild=True)
            print(f"wrote {table_path(cfg, args.table_dir or table_dir())} "
                  f"({space.num_layers} layers x {space.num_ops} ops)")
            return
        if args.arch is None:
            p.error("--arch is required (or use --build)")
        arch = space.parse(args.arch)
        table = load_table(cfg, args.table_dir)
        flops, params = table.flops_of(arch), table.params_of(arch)
        if args.json:
            print(json.dumps({"flops": flops, "params": params}))
        else:
            print(f"{cfg.describe()}\narch:   {space.format(arch)}\n"
                  f"FLOPs:  {flops / 1e6:.2f}M ({flops:,} multiply-adds)\n"
                  f"Params: {params / 1e6:.2f}M ({params:,})")

    run()


if __name__ == "__main__":
    main()
