"""A class-balanced, seeded held-out split of an ImageFolder train set, as symlink trees.

SPOS (and the original BN-NAS code) trains the supernet on ImageNet train minus 50,000
images (an epoch of 1,231,167) and scores candidates by accuracy on those 50,000, never
on the val set that reports final accuracy. `make_split` writes

    OUT/train/<class>/<file>     the rest         -> supernet training, BN recalibration
    OUT/holdout/<class>/<file>   the held-out set -> --test_dir of SPOS accuracy scoring
    OUT/split.json               the request and the counts

as symlinks with absolute targets to the source images. Every class keeps at least one
image in both trees, so both index to the same classes in the same order (the labels
agree with the source's and with each other's).

How many images each class holds out:
  * ``per_class=K``: K of every class.
  * ``total=N``: floor(N / C) of each of the C classes; the N mod C left over go, one
    each, to classes drawn with the seed (a seeded permutation of the classes, taking
    the first ones that can spare the extra image). Class-balanced rather than
    proportional to class size: for ImageNet, 50,000 = 50 per class exactly.
Which images: in class c, the first K of a permutation drawn by
``numpy.random.default_rng([seed, TAG, 1, c])``, so a class's draw depends only on the
seed, its index and its size (not on the other classes, nor on how K was asked for).

The build is atomic: the trees are written into ``.<OUT>.partial-<pid>`` beside OUT and
renamed into place, so OUT is either absent or complete. A temp dir left by a killed
run (its pid no longer alive) is removed by the next run. A rerun of the same split
(same resolved source, same file list fingerprint, same seed and per-class counts) is
a no-op; another split over an existing OUT is refused unless ``force`` (which replaces
OUT, and only a directory that holds nothing but a split made here).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np

from utils.cli.common import UserError
from utils.data.folder import FolderIndex, scan_image_folder

MARKER = "split.json"
TREES = ("train", "holdout")
FORMAT = 1
TAG = 0x401D  # mixes into every seed, so these draws differ from other seeded streams
SUPERNET_BATCH = 512  # supernet/main.py's default --batch_size (the epoch hint)


@dataclasses.dataclass
class SplitPlan:
    """What a split holds: source, per-class held-out counts and both file lists."""
    source: str                   # the source root, absolute (link targets start with it)
    classes: list[str]
    sizes: list[int]              # images per class in the source
    holdout_counts: list[int]     # images per class held out
    train: list[str]              # absolute source paths, in scan order
    holdout: list[str]
    seed: int
    request: dict                 # {"total": N} or {"per_class": K}
    fingerprint: str

    def key(self) -> dict:
        """What fixes the split: a marker with the same key describes the same trees."""
        return dict(format=FORMAT, source=os.path.realpath(self.source),
                    fingerprint=self.fingerprint, seed=self.seed,
                    holdout_per_class=dict(zip(self.classes, self.holdout_counts)))


@dataclasses.dataclass
class SplitResult:
    out: str
    status: str                   # "created", "replaced" or "unchanged"
    marker: dict
    seconds: float = 0.0


# ---- the plan ------------------------------------------------------------------------

def class_sizes(index: FolderIndex) -> list[int]:
    """Images per class of an ImageFolder index, in class order."""
    sizes = [0] * len(index.classes)
    for _, label in index.samples:
        sizes[label] += 1
    return sizes


def _rel(path: str, root: str) -> str:
    """`path` relative to `root` (a plain prefix cut for the scan's paths: 1.28M calls)."""
    prefix = root.rstrip(os.sep) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)


def file_list_fingerprint(index: FolderIndex) -> str:
    """sha256 of the sorted list of image paths relative to the source root (names
    only, no contents or sizes: cheap on 1.28M files, and it changes when an image is
    added, removed or renamed)."""
    h = hashlib.sha256()
    for path, _ in index.samples:
        h.update(_rel(path, index.root).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def holdout_counts(sizes: list[int], classes: list[str], *, total: int | None = None,
                   per_class: int | None = None, seed: int = 0) -> list[int]:
    """Images to hold out per class (exactly one of `total`, `per_class`; see the module
    docstring). A request that would empty a class in either tree is a UserError."""
    if (total is None) == (per_class is None):
        raise UserError("give exactly one of --total N or --per-class K")
    n, c = sum(sizes), len(sizes)
    if per_class is not None:
        if per_class < 1:
            raise UserError(f"--per-class must be at least 1, got {per_class}")
        small = [f"{name} ({s})" for name, s in zip(classes, sizes) if s <= per_class]
        if small:
            raise UserError(f"--per-class {per_class} would leave no training images in "
                            f"class(es) {_few(small)}: each needs more than {per_class}")
        return [per_class] * c
    if total < 1:
        raise UserError(f"--total must be at least 1, got {total}")
    if total >= n:
        raise UserError(f"--total {total} is not smaller than the set ({n:,} images)")
    if total < c:
        raise UserError(f"--total {total} is fewer than the {c} classes: every class needs "
                        f"at least one held-out image (use --total >= {c})")
    base, extra = divmod(total, c)
    small = [f"{name} ({s})" for name, s in zip(classes, sizes) if s <= base]
    if small:
        raise UserError(f"--total {total} ({base} per class) would leave no training images "
                        f"in class(es) {_few(small)}")
    counts = [base] * c
    order = np.random.default_rng([seed, TAG, 0]).permutation(c)
    spare = [int(i) for i in order if sizes[i] > base + 1][:extra]
    if len(spare) < extra:
        raise UserError(f"--total {total}: only {len(spare)} classes can hold out {base + 1} "
                        f"images and keep one for training, {extra} needed")
    for i in spare:
        counts[i] += 1
    return counts


def draw_holdout(index: FolderIndex, counts: list[int], seed: int) -> list[bool]:
    """Per sample of `index`, whether it is held out: class c holds out the first
    counts[c] of a permutation of its images seeded by (seed, c)."""
    by_class: list[list[int]] = [[] for _ in index.classes]
    for i, (_, label) in enumerate(index.samples):
        by_class[label].append(i)
    held = [False] * len(index.samples)
    for label, members in enumerate(by_class):
        rng = np.random.default_rng([seed, TAG, 1, label])
        for j in rng.permutation(len(members))[:counts[label]]:
            held[members[int(j)]] = True
    return held


def plan_split(train_dir: str, *, total: int | None = None, per_class: int | None = None,
               seed: int = 0) -> SplitPlan:
    """Index `train_dir` (as the loaders do) and decide which images are held out."""
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    index = scan_image_folder(os.path.abspath(train_dir) if train_dir else train_dir,
                              "--train_dir")
    sizes = class_sizes(index)
    counts = holdout_counts(sizes, index.classes, total=total, per_class=per_class, seed=seed)
    held = draw_holdout(index, counts, seed)
    train = [p for (p, _), h in zip(index.samples, held) if not h]
    holdout = [p for (p, _), h in zip(index.samples, held) if h]
    request = {"total": total} if total is not None else {"per_class": per_class}
    return SplitPlan(index.root, list(index.classes), sizes, counts, train, holdout, seed,
                     request, file_list_fingerprint(index))


def make_marker(plan: SplitPlan) -> dict:
    """The JSON written to OUT/split.json: the request, what fixes the split, counts."""
    per_class = {name: {"train": s - k, "holdout": k}
                 for name, s, k in zip(plan.classes, plan.sizes, plan.holdout_counts)}
    return dict(format=FORMAT, tool="tools/make_holdout_split.py",
                source=os.path.realpath(plan.source), source_given=plan.source,
                fingerprint=plan.fingerprint, seed=plan.seed, request=plan.request,
                classes=len(plan.classes), source_images=sum(plan.sizes),
                counts=dict(train=len(plan.train), holdout=len(plan.holdout)),
                per_class=per_class,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def marker_key(marker: dict) -> dict:
    """The same fields as `SplitPlan.key`, read back from a marker."""
    return dict(format=marker.get("format"), source=marker.get("source"),
                fingerprint=marker.get("fingerprint"), seed=marker.get("seed"),
                holdout_per_class={name: v.get("holdout") for name, v in
                                   (marker.get("per_class") or {}).items()})


def describe_request(request: dict) -> str:
    if request.get("total") is not None:
        return f"--total {request['total']}"
    return f"--per-class {request.get('per_class')}"


def key_differences(old: dict, new: dict, old_request: dict, new_request: dict) -> list[str]:
    """Readable differences between two split keys (old = the one on disk)."""
    diffs = []
    if old["format"] != new["format"]:
        diffs.append(f"format {old['format']} vs {new['format']}")
    if old["source"] != new["source"]:
        diffs.append(f"source {old['source']} vs {new['source']}")
    elif old["fingerprint"] != new["fingerprint"]:
        diffs.append("the source's file list changed since")
    if old["seed"] != new["seed"]:
        diffs.append(f"--seed {old['seed']} vs {new['seed']}")
    if old["holdout_per_class"] != new["holdout_per_class"]:
        diffs.append(f"{describe_request(old_request)} vs {describe_request(new_request)}")
    return diffs


# ---- the output folder ---------------------------------------------------------------

def _temp_name(out: str, kind: str, pid: int | None = None) -> str:
    parent, base = os.path.split(out)
    return os.path.join(parent, f".{base}.{kind}-{os.getpid() if pid is None else pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: str) -> list[str]:
    """Remove the `.<OUT>.partial-<pid>` / `.<OUT>.old-<pid>` dirs of runs that died
    (pid not alive); returns what was removed."""
    parent, base = os.path.split(out)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for entry in os.scandir(parent):
        for kind in ("partial", "old"):
            prefix = f".{base}.{kind}-"
            if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit():
                pid = int(entry.name[len(prefix):])
                if pid == os.getpid() or not _pid_alive(pid):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.path)
    return removed


def check_out(out: str, source: str) -> None:
    """Refuse an OUT that is a file, or inside the source tree (or holding it)."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory")
    src = os.path.realpath(source)
    real = os.path.realpath(out)
    if real == src or real.startswith(src + os.sep):
        raise UserError(f"--out {out} is inside the source tree {source}; put it elsewhere")
    if src.startswith(real + os.sep):
        raise UserError(f"the source {source} is inside --out {out}; put --out elsewhere")
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise UserError(f"--out {out}: the folder {parent} does not exist")


def read_marker(out: str) -> dict | None:
    """OUT/split.json, or None when OUT holds none; an unreadable one is a UserError."""
    path = os.path.join(out, MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            marker = json.load(f)
        if not isinstance(marker, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); remove {out} or pick another --out")
    return marker


def count_links(tree: str) -> int:
    """Files (symlinks) under `tree`."""
    return sum(len(files) for _, _, files in os.walk(tree))


def tree_damage(out: str, marker: dict) -> str | None:
    """Why OUT does not match its marker's counts (None when it does)."""
    for tree in TREES:
        path = os.path.join(out, tree)
        want = (marker.get("counts") or {}).get(tree)
        if not os.path.isdir(path):
            return f"{path} is missing"
        got = count_links(path)
        if got != want:
            return f"{path} holds {got:,} files, its {MARKER} says {want}"
    return None


def write_trees(plan: SplitPlan, dest: str, marker: dict) -> None:
    """Write both symlink trees and `marker` into the new directory `dest`."""
    os.mkdir(dest)
    for tree, paths in (("train", plan.train), ("holdout", plan.holdout)):
        root = os.path.join(dest, tree)
        made = set()
        for name in plan.classes:  # every class is non-empty in both trees
            os.makedirs(os.path.join(root, name))
            made.add(os.path.join(root, name))
        for path in paths:
            link = os.path.join(root, _rel(path, plan.source))
            folder = os.path.dirname(link)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            os.symlink(path, link)
    with open(os.path.join(dest, MARKER), "w") as f:  # last: its presence = complete
        json.dump(marker, f, indent=1)
        f.write("\n")


def _replaceable(out: str) -> bool:
    """Whether OUT holds nothing but a split made here (what --force may replace)."""
    return set(os.listdir(out)) <= {*TREES, MARKER} and os.path.isfile(
        os.path.join(out, MARKER))


def make_split(train_dir: str, out: str, *, total: int | None = None,
               per_class: int | None = None, seed: int = 0, force: bool = False,
               log=print) -> SplitResult:
    """Write the split (see the module docstring); every refusal is a one-line UserError
    raised before anything is written."""
    t0 = time.perf_counter()
    if not out:
        raise UserError("--out is required (the folder that gets train/ and holdout/)")
    if train_dir and os.path.isdir(train_dir):  # before the (long) scan of the source
        check_out(out, train_dir)
    plan = plan_split(train_dir, total=total, per_class=per_class, seed=seed)
    out = os.path.realpath(out)
    marker = read_marker(out) if os.path.isdir(out) else None
    replacing = False
    if os.path.isdir(out) and os.listdir(out):
        if marker is None:
            raise UserError(f"--out {out} exists and is not a split made by this tool (no "
                            f"{MARKER}); pick another --out or empty it")
        diffs = key_differences(marker_key(marker), plan.key(), marker.get("request") or {},
                                plan.request)
        damage = None if diffs else tree_damage(out, marker)
        if not diffs and not damage and not force:
            clean_stale(out)
            return SplitResult(out, "unchanged", marker, time.perf_counter() - t0)
        if not force and diffs:
            raise UserError(f"--out {out} holds another split ({'; '.join(diffs)}; on disk "
                            f"vs now): use another --out, or --force to replace it")
        if not force:
            raise UserError(f"--out {out} does not match its {MARKER} ({damage}): "
                            f"--force rebuilds it")
        if not _replaceable(out):
            raise UserError(f"--out {out} holds files besides {', '.join(TREES)}/ and "
                            f"{MARKER}; --force replaces only a split made by this tool")
        replacing = True
    for path in clean_stale(out):
        log(f"removed {path} (left by an interrupted run)")
    tmp = _temp_name(out, "partial")
    n = len(plan.train) + len(plan.holdout)
    log(f"linking {n:,} images into {out} ...")
    new_marker = make_marker(plan)
    try:
        write_trees(plan, tmp, new_marker)
        if replacing:
            old = _temp_name(out, "old")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # over a missing or empty directory: atomic
            except OSError as e:
                raise UserError(f"--out {out} appeared while building ({e.strerror}); "
                                f"rerun") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SplitResult(out, "replaced" if replacing else "created", new_marker,
                       time.perf_counter() - t0)


# ---- reporting -----------------------------------------------------------------------

def epoch_hint(n_train: int, batch_size: int = SUPERNET_BATCH) -> str:
    """The supernet's epoch on the train tree: len(train) // batch iterations."""
    return (f"supernet epoch: {n_train:,} images = {n_train // batch_size:,} iterations "
            f"at --batch_size {batch_size} (len(train) // batch)")


def _per_class_range(marker: dict, tree: str) -> str:
    values = [v[tree] for v in (marker.get("per_class") or {}).values()]
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def summary_lines(result: SplitResult, batch_size: int = SUPERNET_BATCH) -> list[str]:
    """What a run prints: the status, both trees and their counts, the epoch hint."""
    m, out = result.marker, result.out
    what = f"{describe_request(m.get('request') or {})}, --seed {m.get('seed')}"
    if result.status == "unchanged":
        head = f"make_holdout_split: {out} already holds this split ({what}); nothing to do"
    else:
        head = f"make_holdout_split: {result.status} {out} ({what}) in {result.seconds:.1f}s"
    counts, c = m.get("counts") or {}, m.get("classes")
    train, holdout = os.path.join(out, "train"), os.path.join(out, "holdout")
    width = max(len(train), len(holdout))
    return [head,
            f"  source:  {m.get('source')}: {m.get('source_images', 0):,} images, {c} classes",
            f"  train:   {train:<{width}}  {counts.get('train', 0):>11,} images, {c} classes "
            f"({_per_class_range(m, 'train')} per class)",
            f"  holdout: {holdout:<{width}}  {counts.get('holdout', 0):>11,} images, {c} classes "
            f"({_per_class_range(m, 'holdout')} per class)",
            f"  {epoch_hint(counts.get('train', 0), batch_size)}",
            f"  supernet: supernet/main.py --train_dir {train} ...",
            f"  SPOS scoring: search/ea.py --score accuracy --train_dir {train} "
            f"--test_dir {holdout} ..."]
