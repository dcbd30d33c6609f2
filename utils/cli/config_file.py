"""`--config FILE.yaml` for every stage, and the resolved-settings file each run writes.

    p = ArgumentParser(...)
    ... p.add_argument(...) ...
    add_config_arg(p, "supernet/main.py")   # --config; p.parse_args() then reads the file
    args = p.parse_args(argv)
    ...
    write_settings(args, "run/checkpoint.config.yaml", resolved=dict(classes=10))

The file is a YAML mapping of flag names to values. A key is a flag's name in any of its
spellings, with or without the leading dashes (`learning_rate`, `learning-rate`,
`--learning-rate`), or its destination name; `no_<flag>` sets a --[no-]flag to false.
Values go through the flag's own `type=` (so the command line's range checks apply) and
its choices; switches (store_true, --[no-]flag) take true/false; list-like flags
(--fixed-skips, --model_id) take a string as on the command line or a YAML list;
repeatable flags (--plugin) take one value or a YAML list of them; null is accepted
where the flag's default is "unset" (None). File paths of --plugin are read from the
config file's folder when they do not exist from the working folder. The file's values become the
parser's defaults, so flags given on the command line override them. Hidden flags
(help=SUPPRESS: --local_rank, --dump-dir, ...) and --config itself are not keys. Any
problem (missing or unreadable file, invalid YAML, unknown key, bad value) is one line,
`error: FILE: key 'k': ...`, exit code 2 (the parser's error()).

`write_settings` writes every settable key (destination names) with the run's resolved
value (plug-in paths made absolute), after a comment header with the command line and
the date, atomically; passing that file back as --config reruns the same settings.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

CONFIG_DEST = "config"
# Flags whose command-line value is a list in one string: the separator a YAML list of
# theirs is joined with (`fixed_skips: [1, 5, 6, 9]` == `--fixed-skips 1,5,6,9`).
LIST_SEPARATORS = {"fixed_skips": ",", "model_id": " "}
# Flags whose values are files (utils/plugins.py): resolved against the config file's
# folder as the plug-in loader does, and written absolute so a settings file reruns
# from any folder.
PATH_DESTS = ("plugin",)


@dataclass(frozen=True)
class _RunInfo:
    script: str             # e.g. "supernet/main.py", for the header
    argv: tuple             # the command line's arguments
    config: str | None      # the --config file read, if any
    keys: tuple             # settable destination names, in the parser's order


# Per parsed Namespace (by id; dropped when the Namespace goes): kept off the Namespace so
# that vars(args), checkpoints' args and Namespace equality stay as they were.
_INFO: dict[int, _RunInfo] = {}


def add_config_arg(parser: argparse.ArgumentParser, script: str) -> None:
    """Add --config to `parser`; its parse_args (utils.cli.argtypes.ArgumentParser) then reads
    the file (`parse_with_config`). `script` names the stage in written settings."""
    parser.add_argument("--config", dest=CONFIG_DEST, default=None, metavar="FILE.yaml",
                        help="read settings from this YAML file (keys: flag names; flags "
                             "given on the command line override it); every run writes "
                             "its resolved settings in this format")
    parser.config_script = script


# ---- reading ------------------------------------------------------------------------

def _norm(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _settable(action: argparse.Action) -> bool:
    if action.dest in (CONFIG_DEST, argparse.SUPPRESS) or action.help == argparse.SUPPRESS:
        return False
    return isinstance(action, (argparse._StoreAction, argparse._AppendAction,
                               argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction))


def settable_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if _settable(a)]


def key_table(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, bool]]:
    """{normalised key: (action, negated)}: every option string and destination name."""
    table: dict[str, tuple[argparse.Action, bool]] = {}

    def put(name: str, action: argparse.Action, negated: bool) -> None:
        old = table.get(name)
        if old is not None and old[0] is not action:
            raise RuntimeError(f"config key {name!r} names two flags of {parser.prog}")
        table[name] = (action, negated)

    for action in settable_actions(parser):
        for opt in action.option_strings:
            negated = (isinstance(action, argparse._StoreFalseAction)
                       or (isinstance(action, argparse.BooleanOptionalAction)
                           and opt.startswith("--no-")))
            put(_norm(opt), action, negated)
        put(_norm(action.dest), action, False)
    return table


class _BadValue(Exception):
    pass


def _yaml_text(value: Any) -> str:
    """A value as the file spells it, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _kind(action: argparse.Action) -> str:
    name = getattr(action.type, "__name__", "str") if action.type is not None else "str"
    return {"int": "an integer", "float": "a number"}.get(name, "text")


def convert(action: argparse.Action, value: Any, negated: bool = False) -> Any:
    """The value `action` gets from a file's `value` (the command line's checks applied)."""
    if isinstance(action, argparse._AppendAction):
        # A repeatable flag: one value or a list, each item as one use of the flag.
        if value is None:
            return list(action.default or [])
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, (list, tuple, dict)) for v in items):
            raise _BadValue("expected a value or a list of values, got a nested list "
                            "or mapping")
        return [_convert_one(action, v) for v in items]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        if value is None and action.default is None:
            return None
        if not isinstance(value, bool):
            raise _BadValue(f"must be true or false, got {_yaml_text(value)}")
        return (not value) if negated else value
    if value is None:
        if action.default is None:
            return None
        raise _BadValue(f"must be {_kind(action)}, got null (leave the key out for the "
                        f"default, {action.default!r})")
    if isinstance(value, dict):
        raise _BadValue("expected a single value, got a mapping")
    if isinstance(value, (list, tuple)):
        sep = LIST_SEPARATORS.get(action.dest)
        if sep is None:
            raise _BadValue("expected a single value, got a list")
        if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            raise _BadValue("expected a list of integers or text items")
        value = sep.join(str(v) for v in value) if value else "none"
    return _convert_one(action, value)


def _convert_one(action: argparse.Action, value: Any) -> Any:
    """One scalar `value` through the flag's type and choices."""
    if value is None:
        raise _BadValue(f"must be {_kind(action)}, got null")
    if isinstance(value, bool):
        raise _BadValue(f"must be {_kind(action)}, got {_yaml_text(value)}"
                        + (" (quote it to mean the word)" if action.type is None else ""))
    text = value if isinstance(value, str) else str(value)
    if action.type is not None:
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError as e:
            raise _BadValue(str(e)) from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", "")
            raise _BadValue(f"invalid {name} value: {text!r}") from None
    else:
        value = text
    if action.choices is not None and value not in action.choices:
        raise _BadValue(f"must be one of {', '.join(map(str, action.choices))}, "
                        f"got {_yaml_text(value)}")
    return value


def _read_yaml(path: str, fail) -> dict:
    try:
        import yaml
    except ImportError:
        fail(f"--config {path}: reading config files needs PyYAML (pip install pyyaml)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        fail(f"--config {path}: no such file")
    except IsADirectoryError:
        fail(f"--config {path}: is a folder, not a YAML file")
    except UnicodeDecodeError:
        fail(f"{path}: not a text (UTF-8) file")
    except OSError as e:
        fail(f"--config {path}: cannot read it ({e.strerror or e})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(x) for x in (getattr(e, "problem", None),) if x) or \
            str(e).splitlines()[0]
        fail(f"{path}: invalid YAML{where}: {what}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping of flag names to values (`key: value` lines), "
             f"got {type(data).__name__ if not isinstance(data, list) else 'a list'}")
    return data


def read_config_values(path: str) -> dict:
    """The file's raw mapping, unchecked (for keys needed before a parser exists, such as
    `plugin`); a problem with the file is a one-line UserError."""
    from utils.errors import UserError

    def fail(message: str):
        raise UserError(message)

    return _read_yaml(path, fail)


def load_values(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """{dest: value} from the file at `path`, each value checked as on the command line;
    any problem is `parser.error` (one line, exit 2)."""
    data = _read_yaml(path, parser.error)
    table = key_table(parser)
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, raw in data.items():
        found = table.get(_norm(key)) if isinstance(key, str) else None
        if found is None:
            shown = key if isinstance(key, str) else _yaml_text(key)
            hint = ""
            if isinstance(key, str) and _norm(key) == CONFIG_DEST:
                hint = " (a config file cannot read another)"
            elif isinstance(key, str):
                close = difflib.get_close_matches(_norm(key), sorted(
                    {a.dest for a, _ in table.values()}), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            parser.error(f"{path}: unknown key {shown!r}{hint}")
        action, negated = found
        if action.dest in given:
            parser.error(f"{path}: keys {given[action.dest]!r} and {key!r} both set "
                         f"{action.option_strings[0]}")
        try:
            values[action.dest] = convert(action, raw, negated)
        except _BadValue as e:
            parser.error(f"{path}: key {key!r}: {e}")
        if action.dest in PATH_DESTS:
            from utils.plugins import config_relative
            values[action.dest] = [config_relative(v, path) for v in values[action.dest]]
        given[action.dest] = key
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv=None, namespace=None):
    """parse_args with --config: the file's values are the defaults, flags override."""
    from utils.cli.argtypes import ArgumentParser
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = ArgumentParser(prog=parser.prog, add_help=False, allow_abbrev=False)
    pre.add_argument("--config", dest=CONFIG_DEST, default=None)
    path = pre.parse_known_args(argv)[0].config
    if path is not None:
        values = load_values(parser, path)
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values and action.required:
                action.required = False  # given by the file
    args = argparse.ArgumentParser.parse_args(parser, argv, namespace)
    if getattr(args, CONFIG_DEST, None) != path:
        parser.error("write --config in full (abbreviated, it is not read as a config file)")
    keys = tuple(dict.fromkeys(a.dest for a in settable_actions(parser)))
    _INFO[id(args)] = _RunInfo(getattr(parser, "config_script", parser.prog), tuple(argv),
                               path, keys)
    weakref.finalize(args, _INFO.pop, id(args), None)
    return args


# ---- writing ------------------------------------------------------------------------

def settings_path_for(checkpoint_path: str) -> str:
    """`run/checkpoint.pth.tar` -> `run/checkpoint.config.yaml` (as metrics_path_for)."""
    base = checkpoint_path
    for ext in (".tar", ".pth", ".pt", ".ckpt"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base + ".config.yaml"


def space_settings(cfg) -> dict:
    """The space flags' values that give SpaceConfig `cfg` (for `resolved=`)."""
    return dict(space=cfg.space, input_size=cfg.input_size, width_mult=cfg.width_mult,
                classes=cfg.classes, stem_stride=cfg.stem_stride,
                fixed_skips=",".join(map(str, cfg.fixed_skips)) or "none")


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def settings_of(args: argparse.Namespace, resolved: dict | None = None) -> dict:
    """{dest: value} of every settable key of the parser that made `args`."""
    info = _INFO.get(id(args))
    if info is None:
        raise RuntimeError("these arguments were not parsed by a parser with --config")
    resolved = resolved or {}
    out = {k: _plain(resolved[k] if k in resolved else getattr(args, k, None))
           for k in info.keys}
    for k in PATH_DESTS:
        if isinstance(out.get(k), list):
            out[k] = [os.path.abspath(p) for p in out[k]]
    return out


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def settings_text(args: argparse.Namespace, resolved: dict | None = None,
                  notes: list[str] | tuple = ()) -> str:
    import yaml
    data = settings_of(args, resolved)
    info = _INFO[id(args)]
    script = info.script
    header = [f"# Resolved settings of {script}, written {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
              f"# command: {_one_line(shlex.join([script, *info.argv]))}"]
    if info.config:
        header.append(f"# read from: {_one_line(info.config)} (then the command line's flags)")
    header += [f"# {_one_line(n)}" for n in notes]
    header.append(f"# rerun: python3 {script} --config THIS_FILE  (flags given override it; "
                  f"paths are relative to the folder the run started in)")
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=1000)
    return "\n".join(header) + "\n" + body


def write_settings(args: argparse.Namespace, path: str, resolved: dict | None = None,
                   notes: list[str] | tuple = ()) -> str | None:
    """Write the run's resolved settings to `path` (YAML, atomically); returns `path`.

    `resolved` overrides values the stage filled in after parsing (e.g. classes from the
    data); `notes` become comment lines of the header. Arguments not parsed by a parser
    with --config (a Namespace built in code) write nothing and return None."""
    from utils.files import write_text_atomic
    if id(args) not in _INFO:
        return None
    write_text_atomic(settings_text(args, resolved, notes), path, suffix=".yaml")
    return path
