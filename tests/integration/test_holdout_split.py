"""tools/make_holdout_split.py and utils/data/holdout.py: a seeded, class-balanced
held-out split of an ImageFolder train set as two symlink trees."""
from __future__ import annotations

import builtins
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_env
from utils.data import holdout as hs
from utils.data.folder import scan_image_folder

SCRIPT = os.path.join(ROOT, "tools", "make_holdout_split.py")
SIZES = (6, 7, 8, 9, 10)  # uneven classes: the --total remainder has to go somewhere


def load_tool():
    spec = importlib.util.spec_from_file_location("make_holdout_split", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TOOL = load_tool()


def run_tool(args: list[str]) -> int:
    """The CLI in this process (cheaper than a subprocess); returns the exit code."""
    try:
        return TOOL.main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def make_source(root: str, sizes=SIZES) -> str:
    """ImageFolder of empty .jpg files (the split only reads names); class 0 has a nested
    folder, and every class a dot-file and a non-image the loaders skip."""
    for c, n in enumerate(sizes):
        d = os.path.join(root, f"c{c}")
        os.makedirs(os.path.join(d, "sub"), exist_ok=True)
        for i in range(n):
            sub = "sub" if c == 0 and i % 2 else ""
            open(os.path.join(d, sub, f"img_{i:03d}.jpg"), "w").close()
        open(os.path.join(d, "._img_000.jpg"), "w").close()
        open(os.path.join(d, "notes.txt"), "w").close()
    return root


@pytest.fixture
def source(tmp_path) -> str:
    return make_source(str(tmp_path / "src"))


def tree_targets(tree: str) -> dict[str, set[str]]:
    """class -> resolved link targets of every file under tree/<class>/."""
    out = {}
    for name in sorted(os.listdir(tree)):
        found = set()
        for folder, _, files in os.walk(os.path.join(tree, name)):
            for f in files:
                p = os.path.join(folder, f)
                assert os.path.islink(p) and os.path.isabs(os.readlink(p)), p
                found.add(os.path.realpath(p))
        out[name] = found
    return out


def source_images(src: str) -> dict[str, set[str]]:
    idx = scan_image_folder(src)
    out = {c: set() for c in idx.classes}
    for p, label in idx.samples:
        out[idx.classes[label]].add(os.path.realpath(p))
    return out


def snapshot(root: str) -> dict[str, tuple]:
    """Every entry under root with its inode and mtime (links not followed)."""
    snap = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            snap[os.path.join(folder, name)] = (st.st_ino, st.st_mtime_ns)
    return snap


def check_partition(src: str, out: str) -> tuple[dict, dict]:
    """The trees are disjoint and together cover the source's images exactly."""
    want = source_images(src)
    train = tree_targets(os.path.join(out, "train"))
    held = tree_targets(os.path.join(out, "holdout"))
    assert sorted(train) == sorted(held) == sorted(want)
    for c in want:
        assert not train[c] & held[c], c
        assert train[c] | held[c] == want[c], c
        assert train[c] and held[c], c
    return train, held


def test_total_spreads_evenly_and_trees_partition_the_source(source, tmp_path, capsys):
    out = str(tmp_path / "split")
    assert run_tool(["--train_dir", source, "--out", out, "--total", "12", "--seed", "3"]) == 0
    train, held = check_partition(source, out)
    counts = [len(held[c]) for c in sorted(held)]
    assert sum(counts) == 12 and sorted(counts) == [2, 2, 2, 3, 3]  # floor(12/5) + 2 extra
    for c, n in zip(sorted(train), SIZES):
        assert len(train[c]) + len(held[c]) == n
    # The nested folder is mirrored; the links point at the source paths as given.
    assert os.path.isdir(os.path.join(out, "train", "c0", "sub"))
    link = next(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, "holdout"))
                for f in fs)
    assert os.readlink(link).startswith(os.path.abspath(source) + os.sep)
    marker = json.load(open(os.path.join(out, hs.MARKER)))
    assert marker["request"] == {"total": 12} and marker["seed"] == 3
    assert marker["counts"] == {"train": sum(SIZES) - 12, "holdout": 12}
    assert {c: v["holdout"] for c, v in marker["per_class"].items()} == \
        {c: len(held[c]) for c in held}
    text = capsys.readouterr().out
    assert f"{os.path.join(out, 'train')}" in text and f"{os.path.join(out, 'holdout')}" in text
    assert f"supernet epoch: {sum(SIZES) - 12} images" in text
    # Nothing but OUT beside OUT: the temp dir was renamed into place.
    assert sorted(os.listdir(tmp_path)) == ["split", "src"]


def test_per_class_takes_k_of_every_class(source, tmp_path):
    out = str(tmp_path / "split")
    os.mkdir(out)  # an existing empty folder is fine
    assert run_tool(["--train_dir", source, "--out", out, "--per-class", "5"]) == 0
    train, held = check_partition(source, out)
    assert [len(held[c]) for c in sorted(held)] == [5] * len(SIZES)
    assert [len(train[c]) for c in sorted(train)] == [n - 5 for n in SIZES]
    # Both trees index to the source's classes in the same order (labels agree).
    classes = scan_image_folder(source).classes
    assert scan_image_folder(os.path.join(out, "train")).classes == classes
    assert scan_image_folder(os.path.join(out, "holdout")).classes == classes


def test_imagenet_counts_and_epoch_hint():
    sizes = [1282] * 167 + [1281] * 833  # 1,281,167 images in 1000 classes
    classes = [f"n{i:08d}" for i in range(1000)]
    counts = hs.holdout_counts(sizes, classes, total=50000, seed=0)
    assert counts == [50] * 1000
    assert hs.holdout_counts(sizes, classes, per_class=50) == counts
    n_train = sum(sizes) - sum(counts)
    assert n_train == 1_231_167
    assert hs.epoch_hint(n_train, 512).startswith(
        "supernet epoch: 1,231,167 images = 2,404 iterations at --batch_size 512")
    # The remainder goes one each to classes drawn with the seed.
    extra = [[i for i, k in enumerate(hs.holdout_counts(sizes, classes, total=50003, seed=s))
              if k == 51] for s in (0, 0, 1)]
    assert len(extra[0]) == 3 and extra[0] == extra[1] and extra[0] != extra[2]


def test_same_seed_same_split_other_seed_differs(source, tmp_path):
    def held(name, seed):
        out = str(tmp_path / name)
        assert run_tool(["--train_dir", source, "--out", out, "--total", "13",
                         "--seed", str(seed)]) == 0
        return tree_targets(os.path.join(out, "holdout"))

    a, b, c = held("a", 0), held("b", 0), held("c", 1)
    assert a == b
    assert a != c
    # A class's draw depends on the seed and its own count only: --per-class 2 holds
    # out the same images as a --total whose counts are 2 everywhere.
    plan_t = hs.plan_split(source, total=10, seed=7)
    plan_k = hs.plan_split(source, per_class=2, seed=7)
    assert plan_t.holdout == plan_k.holdout


def test_rerun_is_a_noop(source, tmp_path, capsys):
    out = str(tmp_path / "split")
    args = ["--train_dir", source, "--out", out, "--per-class", "3", "--seed", "5"]
    assert run_tool(args) == 0
    before = snapshot(str(tmp_path))
    before[out] = (os.stat(out).st_ino, os.stat(out).st_mtime_ns)
    capsys.readouterr()
    # Same request, the source given by another spelling of its path: still the same.
    assert run_tool([*args[:1], os.path.join(source, "..", "src"), *args[2:]]) == 0
    text = capsys.readouterr().out
    assert "already holds this split" in text and "nothing to do" in text
    assert "holdout" in text and f"{3 * len(SIZES)} images" in text
    after = snapshot(str(tmp_path))
    after[out] = (os.stat(out).st_ino, os.stat(out).st_mtime_ns)
    assert after == before


def test_other_request_is_refused_and_force_replaces(source, tmp_path, capsys):
    out = str(tmp_path / "split")
    assert run_tool(["--train_dir", source, "--out", out, "--total", "10"]) == 0
    before = snapshot(str(tmp_path))
    for args, why in ((["--total", "10", "--seed", "1"], "--seed 0 vs 1"),
                      (["--per-class", "3"], "--total 10 vs --per-class 3"),
                      (["--total", "11"], "--total 10 vs --total 11")):
        capsys.readouterr()
        assert run_tool(["--train_dir", source, "--out", out, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and why in err, err
        assert "--force" in err
        assert snapshot(str(tmp_path)) == before
    # A damaged tree is refused too (a rerun never silently builds on it).
    victim = os.path.join(out, "holdout", "c2")
    moved = os.path.join(str(tmp_path), "moved")
    os.rename(victim, moved)
    assert run_tool(["--train_dir", source, "--out", out, "--total", "10"]) == 2
    assert "does not match its split.json" in capsys.readouterr().err
    os.rename(moved, victim)
    # A changed source file list is another request too.
    open(os.path.join(source, "c1", "img_new.jpg"), "w").close()
    assert run_tool(["--train_dir", source, "--out", out, "--total", "10"]) == 2
    assert "file list changed" in capsys.readouterr().err
    os.unlink(os.path.join(source, "c1", "img_new.jpg"))

    # --force replaces the split, atomically, leaving nothing beside it.
    assert run_tool(["--train_dir", source, "--out", out, "--per-class", "3", "--seed", "2",
                     "--force"]) == 0
    assert "replaced" in capsys.readouterr().out
    marker = json.load(open(os.path.join(out, hs.MARKER)))
    assert marker["request"] == {"per_class": 3} and marker["seed"] == 2
    _, held = check_partition(source, out)
    assert all(len(v) == 3 for v in held.values())
    assert sorted(os.listdir(tmp_path)) == ["split", "src"]
    # ... but never a folder holding anything else.
    open(os.path.join(out, "mine.txt"), "w").close()
    assert run_tool(["--train_dir", source, "--out", out, "--total", "10", "--force"]) == 2
    assert "--force replaces only" in capsys.readouterr().err
    assert os.path.exists(os.path.join(out, "mine.txt"))


def _setup_refusal(case: str, tmp_path, source: str) -> list[str]:
    out = str(tmp_path / "split")
    base = ["--train_dir", source, "--out", out]
    if case == "per_class_empties_a_class":
        return [*base, "--per-class", str(min(SIZES))]
    if case == "total_empties_a_class":  # 6 each empties c0 (6 images)
        return [*base, "--total", str(6 * len(SIZES))]
    if case == "total_larger_than_set":
        return [*base, "--total", str(sum(SIZES) + 1)]
    if case == "total_fewer_than_classes":  # a class with an empty holdout tree
        return [*base, "--total", str(len(SIZES) - 1)]
    if case == "zero_total":
        return [*base, "--total", "0"]
    if case == "negative_per_class":
        return [*base, "--per-class", "-2"]
    if case == "both_counts":
        return [*base, "--total", "10", "--per-class", "2"]
    if case == "no_count":
        return base
    if case == "negative_seed":
        return [*base, "--total", "10", "--seed", "-1"]
    if case == "missing_source":
        return ["--train_dir", str(tmp_path / "nope"), "--out", out, "--total", "10"]
    if case == "empty_source":
        os.mkdir(tmp_path / "empty")
        return ["--train_dir", str(tmp_path / "empty"), "--out", out, "--total", "10"]
    if case == "class_without_images":
        os.mkdir(os.path.join(source, "c9"))
        return [*base, "--total", "10"]
    if case == "out_is_a_file":
        open(out, "w").close()
        return [*base, "--total", "10"]
    if case == "out_inside_source":
        return ["--train_dir", source, "--out", os.path.join(source, "split"), "--total", "10"]
    if case == "source_inside_out":
        return ["--train_dir", source, "--out", str(tmp_path), "--total", "10"]
    if case == "out_holds_other_files":
        os.mkdir(out)
        open(os.path.join(out, "keep.txt"), "w").close()
        return [*base, "--total", "10"]
    if case == "out_parent_missing":
        return ["--train_dir", source, "--out", str(tmp_path / "a" / "b"), "--total", "10"]
    if case == "bad_int":
        return [*base, "--total", "many"]
    raise AssertionError(case)


REFUSALS = ["per_class_empties_a_class", "total_empties_a_class", "total_larger_than_set",
            "total_fewer_than_classes", "zero_total", "negative_per_class", "both_counts",
            "no_count", "negative_seed", "missing_source", "empty_source",
            "class_without_images", "out_is_a_file", "out_inside_source",
            "source_inside_out", "out_holds_other_files", "out_parent_missing", "bad_int"]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_are_one_line_and_leave_nothing(case, source, tmp_path, capsys):
    args = _setup_refusal(case, tmp_path, source)
    before = snapshot(str(tmp_path))
    capsys.readouterr()
    assert run_tool(args) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(str(tmp_path)) == before


def test_refusal_from_the_script_is_one_line(source, tmp_path):
    out = str(tmp_path / "split")
    proc = subprocess.run([sys.executable, SCRIPT, "--train_dir", source, "--out", out,
                           "--per-class", "6"], env=run_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "c0 (6)" in proc.stderr
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == ["src"]


def test_interrupted_build_leaves_nothing_and_stale_temp_is_removed(source, tmp_path,
                                                                    monkeypatch, capsys):
    out = str(tmp_path / "split")
    args = ["--train_dir", source, "--out", out, "--total", "10"]
    real_symlink, calls = os.symlink, []

    def symlink_then_interrupt(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_symlink(src, dst, *a, **k)

    monkeypatch.setattr(os, "symlink", symlink_then_interrupt)
    assert run_tool(args) == 130
    monkeypatch.setattr(os, "symlink", real_symlink)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no half tree, no temp dir

    # A run killed outright (no cleanup) leaves its temp dir: the next run removes it,
    # but not that of a run still alive.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".split.partial-{dead.pid}"
    os.makedirs(stale / "train" / "c0")
    open(stale / "train" / "c0" / "x.jpg", "w").close()
    live = tmp_path / f".split.partial-{os.getppid()}"
    os.mkdir(live)
    capsys.readouterr()
    assert run_tool(args) == 0
    assert f"removed {stale}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [live.name, "split", "src"]
    check_partition(source, out)


def test_supernet_on_the_train_tree_never_reads_a_holdout_image(tiny_data, tmp_path,
                                                               monkeypatch, keep_global_rng):
    src, out = os.path.join(tiny_data, "train"), str(tmp_path / "split")
    assert run_tool(["--train_dir", src, "--out", out, "--per-class", "3"]) == 0
    train_targets = set().union(*tree_targets(os.path.join(out, "train")).values())
    held_targets = set().union(*tree_targets(os.path.join(out, "holdout")).values())
    assert len(held_targets) == 12 and len(train_targets) == 36

    # What the loader will index: exactly the train tree, none of the held-out images.
    from utils.data.loaders import build_train_loader
    from utils.dist import setup
    env = setup(None, "cpu")
    loader = build_train_loader(os.path.join(out, "train"), 32, 8, env, 0, 0)
    sampled = {os.path.realpath(p) for p, _ in loader.dataset.samples}
    assert sampled == train_targets and not sampled & held_targets

    # What a supernet run actually opens (workers=0: every read is in this process).
    opened = []
    real_open = builtins.open

    def recording_open(file, *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(os.fsdecode(file)))
        return real_open(file, *a, **k)

    from supernet.main import main
    monkeypatch.setattr(builtins, "open", recording_open)
    try:
        rc = main(["--train_dir", os.path.join(out, "train"), "--input-size", "32",
                   "--width-mult", "0.25", "--stem-stride", "2", "--batch_size", "8",
                   "--report_freq", "4", "--total_iters", "9", "--workers", "0",
                   "--device", "cpu", "--checkpoint", str(tmp_path / "sn" / "ck.pth.tar")])
    except SystemExit as e:
        rc = e.code
    finally:
        monkeypatch.setattr(builtins, "open", real_open)
    assert rc in (0, None)
    images = [p for p in opened if p.startswith(os.path.realpath(tiny_data) + os.sep)]
    # 9 iterations of 8 images: at least one full epoch (4 x 8 distinct) was read.
    assert len(set(images)) >= 32
    assert not set(images) & held_targets
    assert set(images) <= train_targets
