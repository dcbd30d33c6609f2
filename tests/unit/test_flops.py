"""FLOPs / params lookup tables: published numbers, direct counts, JSON tables, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import ROOT, run_env
from utils.flops.table import FlopsTable, committed_dir, load_table, table_path
from utils.spaces import get_space, make_config

PUBLISHED = [  # docs/method.md, "Counting FLOPs and parameters"
    ("mobilenet", "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2", 473_549_240, 5_228_536),
    ("mobilenet", "0 -1 0 0 4 -1 -1 2 0 -1 4 4 3 0 2 1 0 4 2 5 2", 468_807_608, 5_780_560),
    ("shufflenet", "2 1 0 1 2 0 2 0 2 0 2 3 0 0 0 0 3 2 3 3", 322_918_720, 3_558_464),
]


def direct_count(space, arch) -> tuple[int, int]:
    """MACs and params of the built standalone subnet, counted independently of the table:
    PyTorch's own FLOP counter over a whole forward (on the meta device: shapes only)."""
    cfg = space.config
    with torch.device("meta"):
        net = space.subnet(arch).eval()
        x = torch.empty(1, 3, cfg.input_size, cfg.input_size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(x)
    macs = counter.get_total_flops() // 2  # the counter reports 2 FLOPs per MAC
    fc = net.head.classifier
    macs += space.linear_flops(fc.in_features, fc.out_features) - fc.in_features * fc.out_features
    return int(macs), sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tables"))
    return lambda cfg: load_table(cfg, d)


@pytest.mark.parametrize("space_name,arch,flops,params", PUBLISHED)
def test_published_architectures(space_name, arch, flops, params, tables):
    space = get_space(space_name)
    a = space.parse(arch)
    table = tables(space.config)
    assert table.flops_of(a) == flops
    assert table.params_of(a) == params
    assert direct_count(space, a) == (flops, params)


def test_mobilenet_pieces_and_range(tables):
    space = get_space("mobilenet")
    table = tables(space.config)
    assert table.base_flops == 30_105_600 + 40_033_304
    lo = [0 if space.allowed(i) != (-1,) else -1 for i in range(21)]
    hi = [5 if space.allowed(i) != (-1,) else -1 for i in range(21)]
    assert round(table.flops_of(lo) / 1e6, 1) == 393.4
    assert round(table.flops_of(hi) / 1e6, 1) == 849.6


CONFIGS = [dict(), dict(input_size=32, width_mult=0.5, classes=10),
           dict(input_size=32, width_mult=0.5, classes=10, stem_stride=1),
           dict(input_size=64, width_mult=0.75, classes=100)]


@pytest.mark.parametrize("space_name", ["mobilenet", "shufflenet"])
@pytest.mark.parametrize("kw", CONFIGS, ids=["imagenet", "32w.5", "32w.5s1", "64w.75"])
def test_table_sum_equals_direct_count(space_name, kw, tables):
    space = get_space(make_config(space_name, **kw))
    table = tables(space.config)
    rng = np.random.default_rng(3)
    archs = [space.random_arch(rng) for _ in range(6)]
    for a in archs:
        assert (table.flops_of(a), table.params_of(a)) == direct_count(space, a), a
    # Vectorised scoring agrees with one-at-a-time lookups.
    batch = np.array(archs)
    assert table.flops_of(batch).tolist() == [table.flops_of(a) for a in archs]
    assert table.params_of(batch).tolist() == [table.params_of(a) for a in archs]


def test_table_json_roundtrip_and_rebuild(tmp_path, monkeypatch):
    cfg = make_config("mobilenet", input_size=32, width_mult=0.5, classes=10)
    table = load_table(cfg, str(tmp_path))
    path = table_path(cfg, str(tmp_path))
    with open(path) as f:
        d = json.load(f)
    assert d["key"]["input_size"] == 32 and len(d["layers"]) == 21
    assert len(d["layers"][0]["flops"]) == 6 and d["layers"][0]["stride"] == 2
    again = FlopsTable.from_json(d)
    assert np.array_equal(again.flops, table.flops) and again.base_flops == table.base_flops
    # A wrong table in a folder given explicitly is refused in one line, never used.
    good = dict(d, layers=[dict(l) for l in d["layers"]])
    from utils.cli.common import UserError
    edits = {
        "another config": lambda t: t["key"].__setitem__("classes", 11),
        "base_flops is -1": lambda t: t.__setitem__("base_flops", -1),
        "layers, the space has 21": lambda t: t["layers"].pop(),
        "flops entries, the space has 6 ops": lambda t: t["layers"][3]["flops"].pop(),
        "not a non-negative integer": lambda t: t["layers"][2]["params"].__setitem__(0, 1.5),
        "checksum does not match": lambda t: t["layers"][4]["flops"].__setitem__(1, 7),
        "recomputed": lambda t: [l.update(flops=[1] * 6, params=[1] * 6)
                                 for l in t["layers"]] and t.pop("sha256"),
        "not valid JSON": None,
    }
    for needle, edit in edits.items():
        bad = json.loads(json.dumps(good))
        with open(path, "w") as f:
            if edit is None:
                f.write("{not json")
            else:
                edit(bad)
                json.dump(bad, f)
        with pytest.raises(UserError) as e:
            load_table(cfg, str(tmp_path))
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))
    # The same wrong tables in the user cache are rebuilt, with a one-line note.
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNNAS_TABLE_DIR", str(cache))
    cached = table_path(cfg, str(cache))
    os.makedirs(cache)
    for edit in (lambda t: t.__setitem__("base_flops", 1),
                 lambda t: [l.update(flops=[1] * 6) for l in t["layers"]] and t.pop("sha256")):
        bad = json.loads(json.dumps(good))
        edit(bad)
        with open(cached, "w") as f:
            json.dump(bad, f)
        again = load_table(cfg)
        assert again.base_flops == table.base_flops
        assert np.array_equal(again.flops, table.flops)
        with open(cached) as f:
            assert json.load(f)["sha256"] == good["sha256"]


def test_committed_imagenet_tables_are_current():
    for name in ("mobilenet", "shufflenet"):
        space = get_space(name)
        path = table_path(space.config, committed_dir())
        assert os.path.exists(path), f"run utils/flops/get_flops_lookup_table.sh ({path} missing)"
        with open(path) as f:
            saved = FlopsTable.from_json(json.load(f))
        fresh = FlopsTable.build(space)
        assert np.array_equal(saved.flops, fresh.flops) and np.array_equal(saved.params, fresh.params)


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "flops.py"), *args],
                          capture_output=True, text=True, env=run_env(), cwd="/")


def test_cli_json_and_text():
    r = _cli("--space", "mobilenet", "--arch", PUBLISHED[0][1], "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '{"flops": 473549240, "params": 5228536}'
    r = _cli("--space", "shufflenet", "--arch", PUBLISHED[2][1].replace(" ", ","))
    assert r.returncode == 0 and "322.92M" in r.stdout and "3.56M" in r.stdout
    r = _cli("--arch", PUBLISHED[0][1], "--input-size", "32", "--classes", "10",
             "--width-mult", "0.5", "--json")
    space = get_space(make_config("mobilenet", input_size=32, classes=10, width_mult=0.5))
    assert json.loads(r.stdout) == dict(zip(("flops", "params"),
                                            direct_count(space, space.parse(PUBLISHED[0][1]))))


@pytest.mark.parametrize("args,needle", [
    (["--arch", "3 -1 0"], "needs 21 layer choices, got 3"),
    (["--arch", "3 0 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"], "layer 1 is a forced skip"),
    (["--arch", "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 7"], "layer 20 op 7 is out of range"),
    (["--arch", "-1 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"], "layer 0 cannot be skipped"),
    (["--space", "shufflenet", "--arch", "0 " * 19 + "4"], "layer 19 op 4 is out of range"),
    (["--arch", PUBLISHED[0][1], "--fixed-skips", "0"], "layer 0 cannot be skipped"),
])
def test_cli_errors_are_one_line_exit_2(args, needle):
    r = _cli(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and needle in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
