"""search/ea.py and search/eval.py: scores, limits, logs, resuming, errors, interop."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import zipfile
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_env
from tests.search_helpers import (TINY_ARGS, _tables_env, hand_gammas, read_json,  # noqa: F401
                                  save_supernet, search_table_dir, tiny_config)
from utils.checkpoints.io import save_atomic
from utils.cli.common import main_guard
from utils.search.evolution import EASettings, Evolution
from utils.flops.table import load_table
from utils.flops.limits import cost_range, default_flops_limit
from utils.search.log import best_arch, load_log, ranked
from utils.search.run import build_parser, run_search


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


flops_cli = _load_tool("flops")
from utils.spaces import IMAGENET, get_space, make_config

EA = os.path.join(ROOT, "search", "ea.py")
EVAL = os.path.join(ROOT, "search", "eval.py")


@main_guard
def ea_main(argv):
    run_search(build_parser().parse_args(argv))


def eval_main(argv):
    import importlib.util
    spec = importlib.util.spec_from_file_location("search_eval", EVAL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(argv)


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
def hand_run(tmp_path_factory, search_table_dir):
    """One default EA run (20 generations) on a tiny supernet with hand-set gammas."""
    d = tmp_path_factory.mktemp("hand")
    cfg = tiny_config()
    net = save_supernet(str(d / "checkpoint.pth.tar"), cfg, gammas=hand_gammas(get_space(cfg)))
    # The indicator needs only the indicator BNs: a slim copy loads ~10x faster (2,300
    # tensors unpickle slowly) and keeps the other tests quick.
    keep = tuple(p + "." for row in get_space(cfg).indicator_param_names() for p in row)
    save_atomic(dict(kind="supernet", config=cfg.to_dict(), train_all=False, iter=0, epoch=0,
                     seed=0, args={}, state_dict={k: v for k, v in net.state_dict().items()
                                                  if k.startswith(keep)}),
                str(d / "slim.pth.tar"))
    old_cwd, old_env = os.getcwd(), os.environ.get("BNNAS_TABLE_DIR")
    os.environ["BNNAS_TABLE_DIR"] = search_table_dir
    os.chdir(d)
    try:
        ea_main([])  # the reference defaults: ./checkpoint.pth.tar -> log/
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("BNNAS_TABLE_DIR")
        else:
            os.environ["BNNAS_TABLE_DIR"] = old_env
    return dict(dir=str(d), log=str(d / "log"), cfg=cfg, json=read_json(str(d / "log")))


def hand_score(space, arch) -> float:
    g = hand_gammas(space)
    return sum(float(np.float32(g[i][op])) for i, op in enumerate(arch) if op != -1)


def test_score_equals_hand_computed_sum(hand_run):
    space = get_space(hand_run["cfg"])
    res = hand_run["json"]
    assert res["score_kind"] == "indicator" and res["method"] == "both"
    assert len(res["candidates"]) > 500
    for c in res["candidates"] + [res["exact"]]:
        assert c["score"] == pytest.approx(hand_score(space, c["arch"]), abs=1e-9)
    m = np.array(res["indicator"])
    assert m.shape == (space.num_layers, space.num_ops + 1)
    assert m[3, 2] == pytest.approx(0.04 + 0.2, abs=1e-7) and (m[:, -1] == 0).all()


def test_logged_candidates_fit_limit_and_match_flops_cli(hand_run, capsys):
    res, cfg = hand_run["json"], hand_run["cfg"]
    space, table = get_space(cfg), load_table(cfg)
    # Default limit: same relative position as 475M in the ImageNet mobilenet range.
    lo, hi = cost_range(space, table)
    rlo, rhi = cost_range(get_space(make_config("mobilenet", **IMAGENET)),
                          load_table(make_config("mobilenet", **IMAGENET)))
    assert res["flops_limit_mflops"] == pytest.approx(default_flops_limit(cfg)[0])
    assert (res["flops_limit"] - lo) / (hi - lo) == pytest.approx((475e6 - rlo) / (rhi - rlo))
    archs = np.array([c["arch"] for c in res["candidates"]])
    flops = np.array([c["flops"] for c in res["candidates"]])
    assert (flops <= res["flops_limit"]).all()
    assert (flops == table.flops_of(archs)).all()
    assert len({tuple(a) for a in archs.tolist()}) == len(archs)  # each scored once
    for c in (res["candidates"][0], res["candidates"][-1], res["best"], res["exact"]):
        space.validate(c["arch"])
        capsys.readouterr()
        flops_cli.main(TINY_ARGS + ["--arch", " ".join(map(str, c["arch"])), "--json"])
        printed = json.loads(capsys.readouterr().out)
        assert printed == {"flops": c["flops"], "params": c["params"]}


def test_exact_beats_or_ties_ea_and_ranks_first(hand_run, capsys):
    res = hand_run["json"]
    assert res["exact"]["score"] >= res["best"]["score"] - 1e-12
    assert res["gap"] == pytest.approx(res["exact"]["score"] - res["best"]["score"])
    assert res["exact"]["flops"] <= res["flops_limit"]
    assert max(c["score"] for c in res["candidates"]) == res["best"]["score"]
    # eval.py ranks the same way retrain's best_arch picks.
    log = load_log(hand_run["log"])
    r = ranked(log)
    assert [c["score"] for c in r] == sorted((c["score"] for c in r), reverse=True)
    assert len({tuple(c["arch"]) for c in r}) == len(r)
    arch, cfg = best_arch(hand_run["log"])
    assert list(arch) == r[0]["arch"] and cfg == hand_run["cfg"]
    assert r[0]["score"] == res["exact"]["score"]
    capsys.readouterr()
    eval_main(["--log-dir", hand_run["log"], "--json", "--topk", "5"])
    top = json.loads(capsys.readouterr().out)["top"]
    assert [t["arch"] for t in top] == [c["arch"] for c in r[:5]]
    eval_main(["--log-dir", hand_run["log"]])
    lines = capsys.readouterr().out.splitlines()
    # header, column names, 10 rows, then the per-layer indicator spreads
    assert lines[2].split()[1:22] == [str(a) for a in r[0]["arch"]]
    assert lines[12].startswith("indicator spread per layer") and len(lines) >= 15


def test_pth_log_has_reference_keys_and_loads_weights_only(hand_run, tmp_path):
    obj = torch.load(os.path.join(hand_run["log"], "ea_results.pth.tar"), weights_only=True)
    assert {"memory", "candidates", "vis_dict", "keep_top_k", "epoch"} <= set(obj)
    assert obj["kind"] == "search" and obj["epoch"] == 20 and len(obj["memory"]) == 20
    assert set(obj["keep_top_k"]) == {10, 50}
    arch, info = next(iter(obj["vis_dict"].items()))
    assert isinstance(arch, tuple) and info["err"] == -info["score"]
    # The reference's eval.py ranking (ascending err) agrees with ours.
    ref_first = min(obj["vis_dict"], key=lambda a: obj["vis_dict"][a]["err"])
    assert list(ref_first) == hand_run["json"]["best"]["arch"]
    # Without the JSON twin, the .pth.tar alone gives the same ranking.
    alone = tmp_path / "pth_only"
    alone.mkdir()
    shutil.copy(os.path.join(hand_run["log"], "ea_results.pth.tar"), alone)
    key = [(c["arch"], c["score"], c["flops"], c["params"]) for c in ranked(load_log(hand_run["log"]))]
    assert [(c["arch"], c["score"], c["flops"], c["params"])
            for c in ranked(load_log(str(alone)))] == key


def test_finished_log_is_reported_not_redone(hand_run, capsys, monkeypatch):
    monkeypatch.chdir(hand_run["dir"])
    path = os.path.join(hand_run["log"], "ea_results.json")
    before = (os.path.getmtime(path), open(path).read())
    code, out, _ = run_ea(capsys, [])
    assert code == 0 and "already holds this finished search" in out
    assert (os.path.getmtime(path), open(path).read()) == before
    assert "exact optimum:" in out and "Time for scoring 1000 candidates" in out
    code, _, err = run_ea(capsys, ["--flops-limit", "9"])
    assert code == 2 and err.startswith("error: ") and "flops_limit_m" in err
    assert len(err.strip().splitlines()) == 1


def test_resume_after_stop_equals_uninterrupted(hand_run, tmp_path, capsys):
    ck = os.path.join(hand_run["dir"], "slim.pth.tar")
    common = ["--checkpoint", ck, "--max-epochs", "6", "--seed", "3", "--flops-limit", "1.2"]
    assert run_ea(capsys, common + ["--log-dir", str(tmp_path / "a")])[0] == 0
    code, out, _ = run_ea(capsys, common + ["--log-dir", str(tmp_path / "b"),
                                            "--stop-after-generation", "2"])
    assert code == 0 and "stopping after generation 2" in out
    part = read_json(str(tmp_path / "b"))
    assert part["generations"] == 2 and not part["finished"] and part["exact"] is None
    code, out, _ = run_ea(capsys, common + ["--log-dir", str(tmp_path / "b")])
    assert code == 0 and "resuming" in out and "after generation 2 of 6" in out
    a, b = read_json(str(tmp_path / "a")), read_json(str(tmp_path / "b"))
    a["exact"].pop("seconds"), b["exact"].pop("seconds")
    for key in ("candidates", "best", "exact", "gap", "generations", "flops_limit"):
        assert a[key] == b[key], key
    pa = torch.load(str(tmp_path / "a" / "ea_results.pth.tar"), weights_only=True)
    pb = torch.load(str(tmp_path / "b" / "ea_results.pth.tar"), weights_only=True)
    for key in ("memory", "candidates", "vis_dict", "keep_top_k", "epoch", "rng_state"):
        assert pa[key] == pb[key], key


def test_kill_during_a_save_then_rerun_finishes_identically(hand_run, tmp_path, capsys,
                                                            monkeypatch):
    """Die (as on SIGTERM/Ctrl-C) halfway through writing the 4th log: the previous log
    stays intact, and the rerun continues to the same result as an uninterrupted run."""
    import utils.checkpoints.io as ckpt_mod
    ck = os.path.join(hand_run["dir"], "slim.pth.tar")
    common = ["--checkpoint", ck, "--max-epochs", "8", "--flops-limit", "1.2", "--method", "ea"]
    real_save, calls = ckpt_mod.save_atomic, [0]

    def dying_save(obj, path):
        calls[0] += 1
        if calls[0] == 4:
            with open(os.path.join(os.path.dirname(path), ".tmp-partial.pth"), "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(ckpt_mod, "save_atomic", dying_save)
    code, _, err = run_ea(capsys, common + ["--log-dir", str(tmp_path / "b")])
    assert code == 130 and "interrupted" in err
    monkeypatch.setattr(ckpt_mod, "save_atomic", real_save)
    partial = torch.load(str(tmp_path / "b" / "ea_results.pth.tar"), weights_only=True)
    assert partial["epoch"] == 2 and not partial["finished"]
    code, out, _ = run_ea(capsys, common + ["--log-dir", str(tmp_path / "b")])
    assert code == 0 and "after generation 2 of 8" in out
    assert run_ea(capsys, common + ["--log-dir", str(tmp_path / "a")])[0] == 0
    a, b = read_json(str(tmp_path / "a")), read_json(str(tmp_path / "b"))
    assert a["candidates"] == b["candidates"] and a["best"] == b["best"]


def _error(capsys, argv) -> str:
    code, _, err = run_ea(capsys, argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_checkpoints_and_limits_give_one_line_errors(hand_run, tmp_path, capsys):
    cfg = tiny_config()
    assert "not found" in _error(capsys, ["--checkpoint", str(tmp_path / "nope.pth")])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    assert "cannot read checkpoint" in _error(capsys, ["--checkpoint", str(junk)])
    tensor = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(3), tensor)
    assert "not a checkpoint" in _error(capsys, ["--checkpoint", tensor])
    space = get_space(cfg)
    arch = space.random_arch(np.random.default_rng(0))
    sub = str(tmp_path / "subnet.pth")
    save_atomic(dict(kind="subnet", config=cfg.to_dict(), arch=list(arch),
                     state_dict=space.subnet(arch).state_dict(), iters=0), sub)
    assert "subnet, not a supernet" in _error(capsys, ["--checkpoint", sub])
    plain = str(tmp_path / "plain.pth")
    save_atomic({"weights": torch.zeros(2)}, plain)
    assert "not a supernet checkpoint" in _error(capsys, ["--checkpoint", plain])
    ck = os.path.join(hand_run["dir"], "slim.pth.tar")
    lo = cost_range(space, load_table(cfg))[0]
    msg = _error(capsys, ["--checkpoint", ck, "--flops-limit", "0.5"])
    assert "below the cheapest" in msg and f"{lo / 1e6:.2f}M" in msg
    msg = _error(capsys, ["--checkpoint", ck, "--flops-limit", "1.2", "--params-limit", "0.01"])
    assert "--params-limit" in msg and "smallest" in msg
    assert "--method exact" in _error(capsys, ["--checkpoint", ck, "--method", "exact",
                                               "--score", "accuracy"])
    # A real process: exit status 2 and no traceback.
    p = subprocess.run([sys.executable, EA, "--checkpoint", tensor], env=run_env(),
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_params_limit_applies_to_both_methods(hand_run, tmp_path, capsys):
    ck = os.path.join(hand_run["dir"], "slim.pth.tar")
    code, _, _ = run_ea(capsys, ["--checkpoint", ck, "--log-dir", str(tmp_path / "l"),
                                 "--max-epochs", "3", "--flops-limit", "1.2",
                                 "--params-limit", "0.3"])
    assert code == 0
    res = read_json(str(tmp_path / "l"))
    assert all(c["params"] <= 0.3e6 and c["flops"] <= 1.2e6 for c in res["candidates"])
    assert res["exact"]["params"] <= 0.3e6 and res["exact"]["score"] >= res["best"]["score"]


def test_mutation_and_crossover_keep_allowed_ops(search_table_dir):
    cfg = tiny_config(fixed_skips=(2, 3, 10))
    space, table = get_space(cfg), load_table(cfg)
    m = np.random.default_rng(0).uniform(0, 1, (space.num_layers, space.num_ops + 1))
    limit = sum(cost_range(space, table)) / 2

    def make(seed):
        return Evolution(space, EASettings(max_epochs=5, seed=seed),
                         lambda a: m[np.arange(a.shape[1]), a].sum(1),
                         lambda a: (table.flops_of(a), table.params_of(a)), limit,
                         log=lambda s: None)

    ea = make(0)
    ea.run()
    origins = {v["origin"] for v in ea.vis_dict.values()}
    assert {"mutation", "crossover", "random"} <= origins
    for arch in ea.vis_dict:
        space.validate(arch)
        assert arch[2] == arch[3] == arch[10] == -1 and -1 not in arch[:2]
    again, other = make(0), make(1)
    again.run()
    other.run()
    assert list(again.vis_dict.items()) == list(ea.vis_dict.items())  # seeded: repeats
    assert list(other.vis_dict) != list(ea.vis_dict)


def test_reference_supernet_checkpoint_is_searched(tmp_path, capsys):
    """A reference BN-NAS supernet (module.features... keys) is the ImageNet mobilenet."""
    cfg = make_config("mobilenet", **IMAGENET)
    space = get_space(cfg)
    g = hand_gammas(space)
    sd = {"module.conv_bn.1.weight": torch.ones(40)}
    for i, spec in enumerate(space.layers):
        for op in range(space.num_ops):
            sd[f"module.features.{i}._ops.{op}.conv.7.weight"] = torch.full((spec.out,), g[i][op])
            sd[f"module.features.{i}._ops.{op}.conv.7.total_ops"] = torch.zeros(1)
    ck = str(tmp_path / "checkpoint.pth.tar")
    torch.save({"state_dict": sd, "iter": 100, "seed": 0, "operations": []}, ck)
    code, out, _ = run_ea(capsys, ["--checkpoint", ck, "--log-dir", str(tmp_path / "log"),
                                   "--max-epochs", "2"])
    assert code == 0 and "reference BN-NAS checkpoint" in out
    assert "FLOPs limit: 475.00M" in out
    res = read_json(str(tmp_path / "log"))
    assert res["config"] == cfg.to_dict() and res["flops_limit"] == 475e6
    assert res["exact"]["score"] == pytest.approx(hand_score(space, res["exact"]["arch"]))
    assert all(c["flops"] <= 475e6 for c in res["candidates"])


def test_eval_reads_a_reference_log(tmp_path, capsys):
    """Tuple keys, tensor errs, numpy flops and unscored entries, as the original wrote."""
    bnnas = (3, -1, 0, 4, 0, -1, -1, 0, 4, -1, 4, 4, 1, 4, 2, 0, 0, 4, 0, 2, 2)
    spos = (0, -1, 0, 0, 4, -1, -1, 2, 0, -1, 4, 4, 3, 0, 2, 1, 0, 4, 2, 5, 2)
    other = (0, -1, 0, 0, 0, -1, -1, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    vis = {bnnas: {"err": torch.tensor(-14.5, dtype=torch.double), "flops": np.float64(473.5),
                   "visited": True},
           spos: {"err": torch.tensor(-14.2, dtype=torch.double), "flops": np.float64(468.8),
                  "visited": True},
           other: {}}
    d = tmp_path / "log"
    d.mkdir()
    tmp = str(tmp_path / "ref.pth")
    torch.save({"memory": [[bnnas, spos]], "candidates": [bnnas, spos], "vis_dict": vis,
                "keep_top_k": {10: [bnnas, spos], 50: [bnnas, spos]}, "epoch": 20}, tmp)
    # Name numpy's scalar reconstructor as numpy 1.x (the original's era) pickled it.
    with zipfile.ZipFile(tmp) as src, \
            zipfile.ZipFile(str(d / "ea_results.pth.tar"), "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray\nscalar" in data
            dst.writestr(name, data)
    capsys.readouterr()
    eval_main(["--log-dir", str(d), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["source"] == "reference" and [t["arch"] for t in r["top"]] == [list(bnnas), list(spos)]
    assert r["top"][0]["score"] == pytest.approx(14.5)
    assert r["top"][0]["flops"] == 473_549_240  # from our table, not the log's numbers
    arch, cfg = best_arch(str(d))
    assert arch == bnnas and cfg == make_config("mobilenet", **IMAGENET)


def test_memory_holds_each_generations_population(hand_run):
    """`memory` as the reference's: generation g's population (tuples indexing vis_dict);
    the top select_num after each generation is `keep_top_history`."""
    obj = torch.load(os.path.join(hand_run["log"], "ea_results.pth.tar"), weights_only=True)
    assert obj["version"] == 2 and len(obj["memory"]) == obj["epoch"] == 20
    assert len(obj["keep_top_history"]) == 20
    vis = obj["vis_dict"]
    for g, pop in enumerate(obj["memory"]):
        assert pop == [tuple(c) for c in obj["populations"][g]] and len(pop) == 50
        assert all(isinstance(c, tuple) and vis[c]["generation"] == g for c in pop)
    # The top-k after generation g is the best 10 of the populations 0..g.
    for g in (0, 7, 19):
        seen = {c for pop in obj["memory"][:g + 1] for c in pop}
        best = sorted(seen, key=lambda c: (-vis[c]["score"], vis[c]["flops"], vis[c]["params"],
                                           c))[:10]
        assert obj["keep_top_history"][g] == [list(c) for c in best], g
    assert obj["keep_top_history"][-1] == [list(c) for c in obj["keep_top_k"][10]]


def test_version_1_log_resumes_or_is_refused(hand_run, tmp_path, capsys):
    """A log of ours from before keep_top_history (memory = the top-k history) resumes to
    the same end as an uninterrupted run; one without populations is refused in one line."""
    ck = os.path.join(hand_run["dir"], "slim.pth.tar")
    common = ["--checkpoint", ck, "--max-epochs", "5", "--flops-limit", "1.2"]
    assert run_ea(capsys, common + ["--log-dir", str(tmp_path / "a")])[0] == 0
    for name in ("b", "c", "d"):
        assert run_ea(capsys, common + ["--log-dir", str(tmp_path / name),
                                        "--stop-after-generation", "2"])[0] == 0
        pth = str(tmp_path / name / "ea_results.pth.tar")
        obj = torch.load(pth, weights_only=True)
        obj["memory"] = obj.pop("keep_top_history")  # what version 1 wrote
        obj["version"] = 1
        if name == "d":
            del obj["populations"]
        save_atomic(obj, pth)
    code, out, _ = run_ea(capsys, common + ["--log-dir", str(tmp_path / "b")])
    assert code == 0 and "version-1 log" in out and "after generation 2 of 5" in out
    pa = torch.load(str(tmp_path / "a" / "ea_results.pth.tar"), weights_only=True)
    pb = torch.load(str(tmp_path / "b" / "ea_results.pth.tar"), weights_only=True)
    assert pb["version"] == 2
    for key in ("memory", "keep_top_history", "candidates", "vis_dict", "keep_top_k", "epoch"):
        assert pa[key] == pb[key], key
    # --method exact keeps the EA state of the log, rewritten in the new meaning.
    code, out, _ = run_ea(capsys, common + ["--log-dir", str(tmp_path / "c"), "--method", "exact"])
    assert code == 0 and "version-1 log" in out
    pc = torch.load(str(tmp_path / "c" / "ea_results.pth.tar"), weights_only=True)
    assert pc["version"] == 2 and pc["memory"] == pa["memory"][:2]
    assert pc["keep_top_history"] == pa["keep_top_history"][:2]
    msg = _error(capsys, common + ["--log-dir", str(tmp_path / "d")])
    assert "older version" in msg and "cannot be resumed" in msg


def test_eval_reads_an_original_spos_log(tmp_path, capsys):
    """The original SPOS ea.py's log: vis_dict "err" is its tester's (top-1, top-5) error,
    as fractions; eval.py lists it by top-1 accuracy, keeping top-5."""
    a = (0, -1, 0, 0, 4, -1, -1, 2, 0, -1, 4, 4, 3, 0, 2, 1, 0, 4, 2, 5, 2)
    b = (3, -1, 0, 4, 0, -1, -1, 0, 4, -1, 4, 4, 1, 4, 2, 0, 0, 4, 0, 2, 2)
    c = (1, -1, 1, 1, 1, -1, -1, 1, 1, -1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    big = (5, -1, 5, 5, 5, -1, -1, 5, 5, -1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5)
    vis = {a: {"flops": 466e6, "err": (0.3412, 0.1297), "visited": True},
           b: {"flops": 470e6, "err": [0.3550, 0.1388], "visited": True},  # a list, too
           c: {"flops": 410e6, "err": (0.3871, 0.1602), "visited": True},
           big: {"flops": 600e6},  # over the limit: never scored
           (0, -1, 0, 0, 0, -1, -1, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0): {}}
    d = tmp_path / "log"
    d.mkdir()
    torch.save({"memory": [[c, b, a]], "candidates": [a, b, c], "vis_dict": vis,
                "keep_top_k": {10: [a, b, c], 50: [a, b, c]}, "epoch": 1},
               str(d / "ea_results.pth.tar"))
    capsys.readouterr()
    eval_main(["--log-dir", str(d), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["source"] == "reference" and r["score_kind"] == "accuracy"
    assert [t["arch"] for t in r["top"]] == [list(a), list(b), list(c)]
    assert [t["score"] for t in r["top"]] == pytest.approx([65.88, 64.50, 61.29])
    assert [t["top5"] for t in r["top"]] == pytest.approx([87.03, 86.12, 83.98])
    assert r["top"][0]["generation"] == 0 and r["top"][0]["flops"] > 0
    eval_main(["--log-dir", str(d)])
    lines = capsys.readouterr().out.splitlines()
    assert "3 candidates" in lines[0] and "top-1 %" in lines[0] and "top-5" in lines[1]
    assert lines[2].split()[1:22] == [str(x) for x in a]
    assert lines[2].split()[22:24] == ["65.8800", "87.0300"]
    arch, _ = best_arch(str(d))
    assert arch == a
