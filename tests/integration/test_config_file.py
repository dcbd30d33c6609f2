"""--config FILE.yaml (utils/cli/config_file.py): every stage reads one, every run writes its
resolved settings as one, and that file reruns the same result."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, run_env
from tests.search_helpers import (_tables_env, hand_gammas, save_supernet,  # noqa: F401
                                  search_table_dir, tiny_config)

CONFIGS = os.path.join(ROOT, "configs")
TINY = dict(input_size=32, width_mult=0.25, stem_stride=2, batch_size=8, report_freq=2,
            total_iters=3, workers=0, device="cpu", seed=3)


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _exit_code(fn, argv) -> int:
    try:
        rc = fn(argv)
    except SystemExit as e:
        rc = e.code
    return 0 if rc is None else rc


def run_supernet(argv: list[str]) -> int:
    from supernet.main import main
    return _exit_code(main, argv)


def flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += [f"--{k}", str(v)]
    return out


def write_yaml(path, data) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return str(path)


def state_dict(path: str) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def read_settings(path: str) -> tuple[list[str], dict]:
    with open(path) as f:
        text = f.read()
    header = [line for line in text.splitlines() if line.startswith("#")]
    return header, yaml.safe_load(text)


# ---- supernet: config vs flags, written file reruns, precedence ----------------------

def test_supernet_config_equals_flags_and_written_file_reruns(tiny_data, tmp_path, capsys):
    train = os.path.join(tiny_data, "train")
    by_flags = str(tmp_path / "flags" / "checkpoint.pth.tar")
    assert run_supernet(["--train_dir", train, *flags(TINY), "--checkpoint", by_flags]) == 0

    # (a) the same run from a file (both spellings, with and without dashes)
    cfg = write_yaml(tmp_path / "run.yaml", {"train-dir": train, "--input_size": 32,
                                             "width-mult": 0.25, "stem_stride": 2,
                                             "batch-size": 8, "report_freq": 2,
                                             "total_iters": 3, "workers": 0,
                                             "device": "cpu", "seed": 3})
    by_file = str(tmp_path / "file" / "checkpoint.pth.tar")
    assert run_supernet(["--config", cfg, "--checkpoint", by_file]) == 0
    assert_same(state_dict(by_flags), state_dict(by_file))

    # the resolved settings beside the checkpoint: every settable key, resolved values
    written = str(tmp_path / "flags" / "checkpoint.config.yaml")
    header, data = read_settings(written)
    assert any(line.startswith("# command: supernet/main.py --train_dir") for line in header)
    assert any("written 20" in line for line in header)
    from supernet.main import parse_args
    from utils.cli.config_file import _INFO
    args = parse_args(["--train_dir", train])
    keys = list(_INFO[id(args)].keys)
    assert list(data) == keys
    for hidden in ("config", "local_rank", "dump_dir", "help"):
        assert hidden not in data
    assert data["epochs"] == 10 and data["total_iters"] == 3 and data["classes"] == 4
    assert data["fixed_skips"] and data["train_dir"] == train and data["learning_rate"] == 0.25

    # (b) rerun from the written file into another checkpoint: the same weights
    rerun = str(tmp_path / "rerun" / "checkpoint.pth.tar")
    assert run_supernet(["--config", written, "--checkpoint", rerun]) == 0
    assert_same(state_dict(by_flags), state_dict(rerun))
    # the rerun's own file records the same settings (but its checkpoint) and its source
    header2, data2 = read_settings(str(tmp_path / "rerun" / "checkpoint.config.yaml"))
    assert {k: v for k, v in data2.items() if k != "checkpoint"} == \
        {k: v for k, v in data.items() if k != "checkpoint"}
    assert data2["checkpoint"] == rerun
    assert any(line.startswith(f"# read from: {written}") for line in header2)

    # (d) flags override the file: another learning rate gives other weights
    other = str(tmp_path / "other" / "checkpoint.pth.tar")
    assert run_supernet(["--config", written, "--checkpoint", other,
                         "--learning_rate", "0.5"]) == 0
    _, data3 = read_settings(str(tmp_path / "other" / "checkpoint.config.yaml"))
    assert data3["learning_rate"] == 0.5 and data3["batch_size"] == 8
    assert any(not torch.equal(a, b) for a, b in zip(state_dict(by_flags).values(),
                                                       state_dict(other).values()))


def test_command_line_overrides_file(tmp_path):
    from supernet.main import parse_args
    cfg = write_yaml(tmp_path / "c.yaml", dict(batch_size=16, learning_rate=0.1,
                                               channels_last=True, train_all=True,
                                               fixed_skips=[1, 5, 6, 9], epochs=None))
    args = parse_args(["--config", cfg, "--batch_size", "8", "--no-channels-last"])
    assert (args.batch_size, args.learning_rate, args.channels_last) == (8, 0.1, False)
    assert args.train_all and args.epochs == 100  # resolved after the file, as from flags
    assert args.fixed_skips == "1,5,6,9"
    # the file's flags equal the same flags given on the command line
    same = parse_args(["--batch_size", "16", "--learning_rate", "0.1", "--channels-last",
                       "--train-all", "--fixed-skips", "1,5,6,9"])
    from_file = parse_args(["--config", cfg])
    assert {k: v for k, v in vars(from_file).items() if k != "config"} == \
        {k: v for k, v in vars(same).items() if k != "config"}
    # --[no-]flag as a key: no_channels_last: true means channels_last False
    neg = write_yaml(tmp_path / "n.yaml", dict(no_channels_last=True))
    assert parse_args(["--config", neg]).channels_last is False
    # a required flag given by the file (export's --out)
    export = _load("export_cli", "retrain/export.py")
    out = write_yaml(tmp_path / "e.yaml", dict(out=str(tmp_path / "x"), batch=2))
    a = export.parse_args(["--config", out])
    assert a.out == str(tmp_path / "x") and a.batch == 2
    assert export.parse_args(["--config", out, "--out", "y"]).out == "y"


# ---- (c) one-line errors -------------------------------------------------------------

BAD = [
    ("learnig_rate: 0.1\n", "unknown key 'learnig_rate' (did you mean 'learning_rate'?)"),
    ("batch_size: abc\n", "key 'batch_size': expected an integer, got 'abc'"),
    ("batch_size: 0\n", "key 'batch_size': must be an integer in [1, 1048576], got 0"),
    ("batch_size: 8.5\n", "key 'batch_size': expected an integer, got '8.5'"),
    ("batch_size: true\n", "key 'batch_size': must be an integer, got true"),
    ("batch_size: [8]\n", "key 'batch_size': expected a single value, got a list"),
    ("batch_size: null\n", "key 'batch_size': must be an integer, got null"),
    ("momentum: 1\n", "key 'momentum': must be in [0, 1), got 1"),
    ("space: foo\n", "key 'space': must be one of mobilenet, shufflenet, got 'foo'"),
    ("train_all: 'yes'\n", "key 'train_all': must be true or false, got 'yes'"),
    ("local_rank: 0\n", "unknown key 'local_rank'"),
    ("dump_dir: x\n", "unknown key 'dump_dir'"),
    ("config: other.yaml\n", "unknown key 'config'"),
    ("learning_rate: 0.1\nlearning-rate: 0.2\n", "keys 'learning_rate' and 'learning-rate' "
                                                 "both set"),
    ("batch_size: [8\n", "invalid YAML at line 2"),
    ("- 1\n- 2\n", "expected a mapping of flag names to values"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_file_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert run_supernet(["--config", str(path), "--train_dir", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert message in err, err


def test_missing_or_unreadable_file_is_one_line(tmp_path, capsys):
    from utils.search.run import build_parser
    for path, message in ((tmp_path / "nope.yaml", "no such file"),
                          (tmp_path, "is a folder, not a YAML file")):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["--config", str(path)])
        assert e.value.code == 2
        assert capsys.readouterr().err == f"error: --config {path}: {message}\n"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--config"])
    assert capsys.readouterr().err == "error: argument --config: expected one argument\n"
    (tmp_path / "empty.yaml").write_text("# nothing\n")  # an empty file sets nothing
    assert build_parser().parse_args(["--config", str(tmp_path / "empty.yaml")]).seed == 0


def test_bad_file_from_the_command_line_no_traceback(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("learnig_rate: 0.1\n")
    for script in ("supernet/main.py", "search/ea.py"):
        p = subprocess.run([sys.executable, os.path.join(ROOT, script), "--config", str(bad)],
                           capture_output=True, text=True, env=run_env(), timeout=300)
        assert p.returncode == 2, p.stderr
        assert p.stderr == f"error: {bad}: unknown key 'learnig_rate'" + (
            " (did you mean 'learning_rate'?)\n" if "supernet" in script else "\n")


# ---- (e) the published recipes parse with their stage's parser -----------------------

def _parsers():
    from supernet.main import parse_args as supernet_parse
    from utils.search.run import build_parser
    retrain = _load("retrain_cfg", "retrain/train_from_scratch.py")
    return dict(supernet=supernet_parse, search=lambda a: build_parser().parse_args(a),
                retrain=retrain.parse_args)


def _stage(name: str) -> str:
    for stage in ("supernet", "search", "retrain"):
        if stage in name:
            return stage
    raise AssertionError(f"configs/{name}: which stage?")


def _plain(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "config"}


def test_every_config_parses_with_its_stage():
    parse = _parsers()
    names = sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml"))
    assert {"bnnas_supernet_imagenet.yaml", "spos_supernet_imagenet.yaml",
            "search_imagenet.yaml", "retrain_imagenet.yaml", "demo_supernet.yaml",
            "demo_search.yaml", "demo_retrain.yaml"} <= set(names)
    for name in names:
        args = parse[_stage(name)](["--config", os.path.join(CONFIGS, name)])
        assert args.config.endswith(name)


def test_imagenet_recipes_are_the_scripts_defaults():
    parse = _parsers()
    cfg = lambda n: ["--config", os.path.join(CONFIGS, n)]  # noqa: E731

    bn = parse["supernet"](cfg("bnnas_supernet_imagenet.yaml"))
    assert bn.train_dir == "/data/imagenet_split/train"
    base = _plain(parse["supernet"](["--train_dir", bn.train_dir, "--checkpoint",
                                     bn.checkpoint]))
    assert _plain(bn) == base
    assert (bn.batch_size, bn.learning_rate, bn.min_lr, bn.momentum, bn.weight_decay,
            bn.epochs, bn.label_smooth, bn.grad_clip, bn.train_all) == \
        (512, 0.25, 5e-4, 0.9, 4e-5, 10, 0.1, 5.0, False)

    spos = parse["supernet"](cfg("spos_supernet_imagenet.yaml"))
    assert spos.train_all and spos.epochs == 100
    assert _plain(spos) == _plain(parse["supernet"](
        ["--train_dir", spos.train_dir, "--checkpoint", spos.checkpoint, "--train-all"]))

    s = parse["search"](cfg("search_imagenet.yaml"))
    assert (s.max_epochs, s.population_num, s.select_num, s.crossover_num, s.mutation_num,
            s.m_prob, s.flops_limit) == (20, 50, 10, 25, 25, 0.1, "475")
    from utils.flops.limits import default_flops_limit
    from utils.spaces import IMAGENET, get_space, make_config
    assert default_flops_limit(make_config("mobilenet", **IMAGENET))[0] == 475
    assert _plain(s) == dict(_plain(parse["search"](
        ["--checkpoint", s.checkpoint, "--log-dir", s.log_dir])), flops_limit="475")

    r = parse["retrain"](cfg("retrain_imagenet.yaml"))
    assert (r.batch_size, r.learning_rate, r.epochs, r.weight_decay, r.dropout,
            r.label_smooth, r.grad_clip, r.momentum) == (1024, 0.5, 240, 4e-5, 0.2, 0.1, 5.0,
                                                         0.9)
    assert get_space(make_config("mobilenet", **IMAGENET)).default_dropout == 0.2
    assert _plain(r) == dict(_plain(parse["retrain"](
        ["--train_dir", r.train_dir, "--test_dir", r.test_dir, "--arch-from", r.arch_from])),
        dropout=0.2)


def test_demo_configs_are_the_demos_settings():
    demo = _load("run_demo_cfg", "tools/run_demo.py")
    full, space = demo.FULL, demo.DEMO
    parse = _parsers()
    cfg = lambda n: ["--config", os.path.join(CONFIGS, n)]  # noqa: E731
    sn = parse["supernet"](cfg("demo_supernet.yaml"))
    assert (sn.space, sn.input_size, sn.width_mult, sn.stem_stride) == \
        (space["space"], space["input_size"], space["width_mult"], space["stem_stride"])
    assert (sn.batch_size, sn.learning_rate, sn.epochs, sn.min_scale, sn.lighting,
            sn.workers, sn.report_freq, sn.seed, sn.train_all) == \
        (full["supernet_batch"], full["supernet_lr"], full["supernet_epochs"],
         full["min_scale"], 0.0, 1, 10, 0, False)
    assert (sn.train_dir, sn.checkpoint) == ("data/train", "supernet/checkpoint.pth.tar")
    se = parse["search"](cfg("demo_search.yaml"))
    assert _plain(se) == _plain(parse["search"](
        ["--checkpoint", "supernet/checkpoint.pth.tar", "--log-dir", "search", "--seed", "0"]))
    rt = parse["retrain"](cfg("demo_retrain.yaml"))
    assert (rt.batch_size, rt.learning_rate, rt.epochs, rt.min_scale, rt.lighting,
            rt.dropout, rt.workers, rt.report_freq, rt.seed, rt.save, rt.val_crop_pct) == \
        (full["retrain_batch"], full["retrain_lr"], full["retrain_epochs"],
         full["min_scale"], 0.0, 0.0, 1, 20, 0, "demo", full["val_crop_pct"])
    assert (rt.arch_from, rt.train_dir, rt.test_dir) == ("search", "data/train", "data/val")


# ---- the other stages write their settings too, and those rerun ----------------------

def test_search_writes_settings_that_rerun(tmp_path, capsys):
    ea = _load("ea_cfg", "search/ea.py")
    ck = str(tmp_path / "supernet.pth.tar")
    from utils.spaces import get_space
    save_supernet(ck, tiny_config(), gammas=hand_gammas(get_space(tiny_config())), seed=1)
    log_a = str(tmp_path / "log_a")
    argv = ["--checkpoint", ck, "--log-dir", log_a, "--max-epochs", "2", "--population-num",
            "8", "--select-num", "4", "--mutation-num", "4", "--crossover-num", "4",
            "--seed", "5"]
    assert _exit_code(ea.main, argv) == 0
    header, data = read_settings(os.path.join(log_a, "config.yaml"))
    assert data["max_epochs"] == 2 and data["population_num"] == 8 and data["seed"] == 5
    assert "stop_after_generation" not in data and "local_rank" not in data
    assert any(line.startswith("# FLOPs limit:") for line in header)
    log_b = str(tmp_path / "log_b")
    assert _exit_code(ea.main, ["--config", os.path.join(log_a, "config.yaml"),
                                "--log-dir", log_b]) == 0

    def results(d):
        with open(os.path.join(d, "ea_results.json")) as f:
            r = json.load(f)
        untimed = {k: v for k, v in r["exact"].items() if "second" not in k and "time" not in k}
        return dict({k: r[k] for k in ("best", "candidates", "flops_limit")}, exact=untimed)
    assert results(log_a) == results(log_b)


def test_retrain_writes_settings_that_rerun(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    retrain = _load("retrain_cfg_run", "retrain/train_from_scratch.py")
    argv = ["--train_dir", os.path.join(tiny_data, "train"), "--test_dir",
            os.path.join(tiny_data, "val"), "--input-size", "32", "--width-mult", "0.25",
            "--stem-stride", "1", "--batch_size", "8", "--workers", "0", "--total_iters", "2",
            "--report_freq", "1", "--learning_rate", "0.1", "--device", "cpu", "--save", "a"]
    assert _exit_code(retrain.main, argv) == 0
    header, data = read_settings("eval-a/config.yaml")
    assert data["save"] == "a" and data["classes"] == 4 and data["dropout"] == 0.2
    assert data["input_format"] == "rgb" and data["resize_mode"] == "antialias"
    assert any(line.startswith("# architecture: ") for line in header)
    assert _exit_code(retrain.main, ["--config", "eval-a/config.yaml", "--save", "b"]) == 0
    assert_same(state_dict("eval-a/checkpoint.pth.tar"), state_dict("eval-b/checkpoint.pth.tar"))
    _, data_b = read_settings("eval-b/config.yaml")
    assert dict(data_b, save="a") == data
    # --eval with --save writes its own settings beside eval.json
    assert _exit_code(retrain.main, ["--eval", "--eval-resume", "eval-a/best.pth.tar",
                                     "--test_dir", os.path.join(tiny_data, "val"),
                                     "--workers", "0", "--device", "cpu", "--save", "a"]) == 0
    _, ev = read_settings("eval-a/eval_config.yaml")
    assert ev["eval"] is True and ev["eval_resume"] == "eval-a/best.pth.tar"
