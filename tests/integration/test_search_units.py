"""search/ea.py --flops-limit / --params-limit: our millions and the reference's raw counts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, run_env
from tests.search_helpers import (_tables_env, hand_gammas, read_json,  # noqa: F401
                                  search_table_dir)
from utils.cli.common import UserError, main_guard
from utils.flops.table import load_table
from utils.flops.limits import RAW_COUNT_FROM, cost_range, parse_limit
from utils.search.run import build_parser, run_search
from utils.spaces import IMAGENET, get_space, make_config

EA = os.path.join(ROOT, "search", "ea.py")
IMAGENET_CFG = make_config("mobilenet", **IMAGENET)


@main_guard
def ea_main(argv):
    run_search(build_parser().parse_args(argv))


def run_ea(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        ea_main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ref_ck(tmp_path_factory) -> str:
    """A reference-format BN-NAS supernet of the ImageNet mobilenet: only the state dict's
    indicator BNs, so it is quick to write and load (no network is built)."""
    space = get_space(IMAGENET_CFG)
    g = hand_gammas(space)
    sd = {"module.conv_bn.1.weight": torch.ones(40)}
    for i, spec in enumerate(space.layers):
        for op in range(space.num_ops):
            sd[f"module.features.{i}._ops.{op}.conv.7.weight"] = torch.full((spec.out,), g[i][op])
    path = str(tmp_path_factory.mktemp("ref") / "checkpoint.pth.tar")
    torch.save({"state_dict": sd, "iter": 100, "seed": 0}, path)
    return path


def _search(capsys, ck, log_dir, *flags) -> tuple[dict, str]:
    code, out, err = run_ea(capsys, ["--checkpoint", ck, "--log-dir", str(log_dir),
                                     "--max-epochs", "2", *flags])
    assert code == 0, err
    return read_json(str(log_dir)), out


def _error(capsys, argv) -> str:
    code, _, err = run_ea(capsys, argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("text,reading", [
    ("475", "millions"), ("475M", "millions"), ("475m", "millions"), (" 475 M", "millions"),
    ("475e6", "count"), ("475000000", "count"), ("4.75e8", "count"), ("475000000.0", "count")])
def test_every_spelling_reads_as_475_mflops(text, reading):
    lim = parse_limit(text)
    assert lim.millions == 475.0 and lim.count == 475e6 and lim.reading == reading
    unit = "multiply-adds" if reading == "count" else "MFLOPs"
    assert lim.explained.startswith(f"--flops-limit {text.strip()} read as {unit}")


def test_threshold_and_params_spellings():
    assert RAW_COUNT_FROM == 1e5
    assert parse_limit("99999").millions == 99999.0  # below: millions
    assert parse_limit("100000").millions == 0.1  # from there: a raw count
    assert parse_limit("1e5M").millions == 1e5  # a suffix always means millions
    for text in ("5.2", "5.2M", "5.2m", "5.2e6", "5200000"):
        lim = parse_limit(text, "params")
        assert lim.millions == 5.2 and lim.count == 5.2e6, text
    assert parse_limit("5.2e6", "params").explained == \
        "--params-limit 5.2e6 read as a parameter count"
    for bad in ("inf", "-inf", "nan", "0", "-475", "0M", "abc", "475k", "", "M", "1e400"):
        with pytest.raises(UserError):
            parse_limit(bad)


def test_reference_spelling_gives_the_same_search(ref_ck, tmp_path, capsys):
    """`--flops-limit 475e6` (the reference's unit) and `--flops-limit 475` (ours) are one
    search: same limit, same choice, every candidate within 475M."""
    runs = {text: _search(capsys, ref_ck, tmp_path / text, "--flops-limit", text)
            for text in ("475e6", "475", "475M", "475000000")}
    for text, (res, _) in runs.items():
        assert res["flops_limit"] == 475e6 and res["flops_limit_mflops"] == 475.0, text
        assert res["candidates"] and all(c["flops"] <= 475e6 for c in res["candidates"]), text
        assert res["exact"]["flops"] <= 475e6 and res["best"]["flops"] <= 475e6
    base = runs["475"][0]
    for text, (res, _) in runs.items():
        for key in ("best", "candidates", "flops_range"):
            assert res[key] == base[key], (text, key)
        assert res["exact"]["arch"] == base["exact"]["arch"]
    # Which reading was used is printed and logged.
    for text, (res, out) in runs.items():
        reading = "multiply-adds" if text in ("475e6", "475000000") else "MFLOPs"
        assert f"FLOPs limit: 475.00M (--flops-limit {text} read as {reading}" in out
        assert res["flops_limit_reading"].startswith(f"--flops-limit {text} read as {reading}")
        assert not res["flops_limit_excludes_nothing"] and res["limit_warnings"] == []


def test_params_spellings_give_the_same_search(ref_ck, tmp_path, capsys):
    table = load_table(IMAGENET_CFG)
    runs = []
    for text in ("5.5", "5.5M", "5.5e6", "5500000"):
        res, out = _search(capsys, ref_ck, tmp_path / text, "--params-limit", text)
        assert f"params limit: 5.50M (--params-limit {text} read as" in out
        assert res["params_limit"] == 5.5e6 and res["params_limit_mparams"] == 5.5
        assert res["params_limit_reading"].startswith(f"--params-limit {text} read as")
        assert all(c["params"] <= 5.5e6 for c in res["candidates"])
        assert table.params_of(res["exact"]["arch"]) <= 5.5e6
        runs.append(res)
    assert all(r["candidates"] == runs[0]["candidates"] for r in runs)
    assert runs[2]["params_limit_reading"].endswith("read as a parameter count")


def test_limit_that_excludes_nothing_is_said(ref_ck, tmp_path, capsys):
    space = get_space(IMAGENET_CFG)
    table = load_table(IMAGENET_CFG)
    hi = cost_range(space, table)[1]
    phi = cost_range(space, table, "params")[1]
    res, out = _search(capsys, ref_ck, tmp_path / "all", "--flops-limit", "99999",
                       "--params-limit", "9M")
    assert res["flops_limit_mflops"] == 99999.0 and res["flops_limit_excludes_nothing"]
    assert res["params_limit_excludes_nothing"] and len(res["limit_warnings"]) == 2
    assert f"costliest architecture of this space ({hi / 1e6:.2f}M): it excludes nothing" in out
    assert f"({phi / 1e6:.2f}M): it excludes nothing" in out
    assert out.count("warning: ") >= 2
    # Exactly the costliest architecture's FLOPs also excludes nothing.
    res, out = _search(capsys, ref_ck, tmp_path / "edge", "--flops-limit", str(hi))
    assert res["flops_limit_excludes_nothing"] and "excludes nothing" in out
    assert res["flops_limit_reading"].endswith("read as multiply-adds")
    res, _ = _search(capsys, ref_ck, tmp_path / "below", "--flops-limit", str(hi - 1))
    assert not res["flops_limit_excludes_nothing"] and res["limit_warnings"] == []


@pytest.mark.parametrize("flag,value", [("--flops-limit", "inf"), ("--flops-limit", "nan"),
                                        ("--flops-limit", "0"), ("--flops-limit", "-475"),
                                        ("--flops-limit", "475k"), ("--flops-limit", "abc"),
                                        ("--params-limit", "inf"), ("--params-limit", "0"),
                                        ("--params-limit", "x5")])
def test_bad_limits_are_one_line_errors(ref_ck, tmp_path, capsys, flag, value):
    msg = _error(capsys, ["--checkpoint", ref_ck, "--log-dir", str(tmp_path / "l"), flag, value])
    assert flag in msg and repr(value) in msg
    assert not (tmp_path / "l").exists()
    # Refused before the supernet is read: a missing checkpoint is not what is reported.
    msg = _error(capsys, ["--checkpoint", str(tmp_path / "nope"), flag, value])
    assert flag in msg


def test_bad_limit_in_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, EA, "--flops-limit", "inf"], env=run_env(),
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("error: --flops-limit must be a positive finite number")


def test_help_names_both_units():
    p = subprocess.run([sys.executable, EA, "-h"], env=run_env(), capture_output=True,
                       text=True, cwd=ROOT)
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and "475e6" in text and "5.2e6" in text and ">= 1e5" in text
