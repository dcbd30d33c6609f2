"""The search-space registry and plug-ins: a space is one file (docs/examples/toy_space.py)
that a `--plugin` loads, and every user of a space's facts reads them from its class."""
from __future__ import annotations

import argparse
import os
import shutil

import pytest
import torch
import yaml

from tests.conftest import ROOT
from utils.cli.common import UserError, add_space_args
from utils.plugins import add_plugin_arg, load_plugin
from utils.spaces import SPACES, ConfigError, create_space, get_space, imagenet_config

EXAMPLE = os.path.join(ROOT, "docs", "examples", "toy_space.py")
SMALL = dict(input_size=32, classes=10, stem_stride=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The example space, loaded from a copy outside the repository (once: a second copy
    would be another class under the same name, which the registry refuses)."""
    folder = tmp_path_factory.mktemp("plugins")
    path = str(folder / "toy_space.py")
    shutil.copy(EXAMPLE, path)
    module = load_plugin(path)
    return path, module.ToySpace


@pytest.fixture()
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BNNAS_TABLE_DIR", str(tmp_path / "tables"))
    return str(tmp_path / "tables")


def space_parser() -> argparse.ArgumentParser:
    from utils.cli.argtypes import ArgumentParser
    p = ArgumentParser(prog="t")
    add_space_args(p)
    return p


# ---- (a) a plug-in space works everywhere -------------------------------------------

def test_plugin_space_is_registered_and_selectable(toy):
    path, cls = toy
    assert SPACES.get("toy") is cls and "toy" in SPACES.names()
    assert load_plugin(path).ToySpace is cls  # loading again is a no-op
    assert "toy" in space_parser()._option_string_actions["--space"].choices
    assert space_parser().parse_args(["--space", "toy"]).space == "toy"


def test_plugin_space_builds_networks_and_its_table(toy, table_dir):
    from utils.flops.limits import cost_range
    from utils.flops.table import load_table, table_path
    _, cls = toy
    space = create_space(imagenet_config("toy", **SMALL))
    assert isinstance(space, cls) and space.num_layers == 3 and space.num_ops == 2
    x = torch.randn(2, 3, 32, 32)
    arch = space.parse(cls.published_arch)
    sup = space.supernet()
    assert sup(x, arch).shape == (2, 10)
    sub = space.subnet(arch, supernet=sup).eval()
    sup.eval()
    assert torch.allclose(sub(x), sup(x, arch), atol=1e-5)
    assert len(space.indicator_param_names()) == 3
    table = load_table(space.config, directory=table_dir)
    assert os.path.exists(table_path(space.config, table_dir))
    lo, hi = cost_range(space, table)
    assert lo < table.flops_of(arch) <= hi
    assert (space.op_columns([0, 1, -1]) == [0, 1, 2]).all()
    assert (space.column_ops([0, 1, 2]) == [0, 1, -1]).all()


def test_plugin_space_facts_are_read_from_its_class(toy, table_dir):
    from utils.checkpoints.subnet import published_arch, resolve_config
    from utils.export.hub import build_subnet
    from utils.flops.limits import default_flops_limit
    _, cls = toy
    assert published_arch("toy") == cls.published_arch
    # The published setting and limit: the limit as published; another config's at the
    # same relative place of its own range.
    limit, why = default_flops_limit(imagenet_config("toy"))
    assert limit == cls.published_limit_m and "published" in why
    small, why = default_flops_limit(imagenet_config("toy", **SMALL))
    assert small != cls.published_limit_m and "of the way" in why
    # Unset space flags fall back to the class's published setting.
    ns = argparse.Namespace(space="toy", input_size=None, width_mult=None, classes=None,
                            stem_stride=None, fixed_skips=None)
    assert resolve_config(ns) == imagenet_config("toy")
    loaded = build_subnet(space="toy", **SMALL)
    assert loaded.arch == get_space(loaded.config).parse(cls.published_arch)
    assert loaded.arch_source.startswith("published")


def test_space_without_published_facts(tmp_path, table_dir):
    from utils.checkpoints.subnet import published_arch
    from utils.flops.limits import UNPUBLISHED_FRACTION, cost_range, default_flops_limit
    from utils.flops.table import load_table
    src = open(EXAMPLE).read()
    src = (src.replace('name = "toy"', 'name = "toy_bare"')
           .replace('published_arch = "1 0 1"', "published_arch = None")
           .replace("published_limit_m = 3.7", "published_limit_m = None"))
    path = tmp_path / "bare_space.py"
    path.write_text(src)
    load_plugin(str(path))
    with pytest.raises(UserError, match="toy_bare space has no published architecture"):
        published_arch("toy_bare")
    cfg = imagenet_config("toy_bare", **SMALL)
    limit, why = default_flops_limit(cfg)
    lo, hi = cost_range(get_space(cfg), load_table(cfg))
    assert limit == pytest.approx((lo + UNPUBLISHED_FRACTION * (hi - lo)) / 1e6)
    assert "publishes no limit" in why


def test_export_script_takes_a_plugin(toy, tmp_path, table_dir, capsys):
    from retrain.export import main
    path, _ = toy
    out = str(tmp_path / "export")
    assert main(["--plugin", path, "--space", "toy", "--input-size", "32", "--classes", "10",
                 "--stem-stride", "1", "--out", out]) == 0
    assert {"model.onnx", "model.ts.pt", "arch.json"} <= set(os.listdir(out))
    assert "architecture: 1 0 1 (published" in capsys.readouterr().out


def test_config_file_plugin_key_and_written_settings(toy, tmp_path, monkeypatch):
    from utils.cli.argtypes import ArgumentParser
    from utils.cli.config_file import add_config_arg, settings_of
    from utils.plugins import plugin_paths
    path, _ = toy
    folder = os.path.dirname(path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(dict(plugin=os.path.relpath(path, tmp_path), space="toy")))
    monkeypatch.chdir(folder)  # relative to the config file, not to the working folder

    def parser():
        p = ArgumentParser(prog="t")
        add_space_args(p)
        add_plugin_arg(p)
        add_config_arg(p, "t.py")
        return p

    assert [os.path.realpath(p) for p in plugin_paths(["--config", str(cfg)])] == \
        [os.path.realpath(path)]
    args = parser().parse_args(["--config", str(cfg)])
    assert args.space == "toy" and [os.path.realpath(p) for p in args.plugin] == \
        [os.path.realpath(path)]
    written = settings_of(args)
    assert written["plugin"] == [os.path.abspath(args.plugin[0])]
    # the command line adds to the file's; a list works as well as a single path
    cfg.write_text(yaml.safe_dump(dict(plugin=[path])))
    args = parser().parse_args(["--config", str(cfg), "--plugin", "toy_space.py"])
    assert args.plugin == [path, "toy_space.py"]
    assert settings_of(args)["plugin"] == [path, os.path.join(folder, "toy_space.py")]
    assert settings_of(parser().parse_args([]))["plugin"] == []


# ---- (b) one-line errors ------------------------------------------------------------

def one_line(text: str) -> str:
    text = text.strip()
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_unknown_space_is_one_line(capsys):
    for call in (lambda: get_space("nope"), lambda: imagenet_config("nope")):
        with pytest.raises(ConfigError) as e:
            call()
        assert "unknown search space 'nope'" in one_line(str(e.value))
    with pytest.raises(UserError, match="unknown search space 'nope' .*mobilenet"):
        SPACES.get("nope")
    with pytest.raises(SystemExit) as e:
        space_parser().parse_args(["--space", "nope"])
    assert e.value.code == 2
    err = one_line(capsys.readouterr().err)
    assert "nope" in err and "mobilenet" in err


@pytest.mark.parametrize("name,body,expected", [
    ("broken.py", "def f(:\n", "syntax error at line 1"),
    ("raises.py", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("notpython.txt", "x = 1\n", "not a .py file"),
    ("missing.py", None, "no such file"),
])
def test_bad_plugin_files_are_one_line(tmp_path, name, body, expected):
    path = tmp_path / name
    if body is not None:
        path.write_text(body)
    with pytest.raises(UserError) as e:
        load_plugin(str(path))
    msg = one_line(str(e.value))
    assert str(path) in msg and expected in msg


def test_export_script_reports_a_bad_plugin_in_one_line(tmp_path, capsys):
    from retrain.export import main
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_here\n")
    with pytest.raises(SystemExit) as e:
        main(["--plugin", str(bad), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: --plugin ") and str(bad) in err and "ModuleNotFoundError" in err


# ---- (c) a taken name ----------------------------------------------------------------

def test_plugin_cannot_take_a_registered_name(tmp_path):
    builtin = SPACES.get("mobilenet")
    path = tmp_path / "impostor.py"
    path.write_text(open(EXAMPLE).read().replace('name = "toy"', 'name = "mobilenet"'))
    with pytest.raises(UserError) as e:
        load_plugin(str(path))
    msg = one_line(str(e.value))
    assert str(path) in msg and "'mobilenet' is already registered" in msg
    assert SPACES.get("mobilenet") is builtin
