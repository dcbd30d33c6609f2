"""`--plugin FILE.py`: import user files that register spaces, scorers or datasets.

Every stage script calls `load_plugins_from_argv()` before it builds its parser, so the
choices of `--space`, `--score` and `--dataset` include what the plug-ins registered.
A `plugin:` key in a `--config` file counts as well, so a run's written settings rerun it.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys

from utils.errors import UserError

_LOADED: dict[str, object] = {}  # absolute path -> module: each file is imported once


def add_plugin_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import this Python file first, so that it can register a "
                             "search space, scorer or dataset (repeatable)")


def _argv_values(argv: list[str], flag: str) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a == flag:
            if i + 1 >= len(argv):
                raise UserError(f"{flag} needs a value")
            out.append(argv[i + 1])
            i += 2
            continue
        if a.startswith(flag + "="):
            out.append(a[len(flag) + 1:])
        i += 1
    return out


def config_relative(path: str, config_file: str) -> str:
    """A path read from `config_file`: as given when absolute or found from the working
    folder, else relative to the config file's folder (so a file and its plug-in can be
    moved together)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(config_file)), path)


def plugin_paths(argv: list[str]) -> list[str]:
    """The --plugin files named on the command line and in its --config file(s)."""
    paths = []
    for cfg in _argv_values(argv, "--config"):
        from utils.cli.config_file import read_config_values  # yaml only when needed
        value = read_config_values(cfg).get("plugin")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in values):
            raise UserError(f"{cfg}: key 'plugin' must be a file path or a list of them")
        paths += [config_relative(v, cfg) for v in values]
    return paths + _argv_values(argv, "--plugin")


def load_plugin(path: str):
    """Import `path` as a module (once); one-line UserError if that is not possible."""
    if not path.endswith(".py"):
        raise UserError(f"--plugin {path}: not a .py file")
    if not os.path.exists(path):
        raise UserError(f"--plugin {path}: no such file")
    if not os.path.isfile(path):
        raise UserError(f"--plugin {path}: not a file")
    full = os.path.realpath(path)
    if full in _LOADED:
        return _LOADED[full]
    stem = os.path.splitext(os.path.basename(full))[0]
    name = f"bnnas_plugin_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except UserError as e:
        sys.modules.pop(name, None)
        raise UserError(f"--plugin {path}: {e}") from None
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise UserError(f"--plugin {path}: syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # the user's code: name it in one line, no traceback
        sys.modules.pop(name, None)
        raise UserError(f"--plugin {path}: {type(e).__name__}: {e}") from None
    _LOADED[full] = module
    return module


def load_plugins(paths) -> list:
    return [load_plugin(p) for p in paths]


def load_plugins_from_argv(argv: list[str] | None = None) -> list:
    return load_plugins(plugin_paths(sys.argv[1:] if argv is None else list(argv)))
