"""The search log: where search/ea.py writes, and what eval.py and retrain read.

A log folder holds `ea_results.pth.tar` (the reference's keys memory, candidates,
vis_dict, keep_top_k, epoch - memory one list per generation of the population it started
from, as the reference; vis_dict keyed by arch tuples, each entry with "err" (lower is
better, as the reference) plus "score", "flops", "params", "generation" - and
kind="search", config, the exact optimum, the resume state with keep_top_history, the
top select_num after each generation) and its JSON twin `ea_results.json`. A reference
log (only the .pth.tar, tuple keys, possibly numpy scalars) is read too: BN-NAS's "err"
is minus the BN score; SPOS's "err" is a (top-1, top-5) error tuple or list, read as
top-1 accuracy % (the score) and top-5 accuracy % ("top5").

    log = load_log("search/log")
    for c in ranked(log)[:10]: print(c["arch"], c["score"], c["flops"])
    arch, config = best_arch("search/log")   # what retrain --arch-from uses

The ranking is: every logged candidate plus the exact optimum, deduplicated, highest
score first; ties go to fewer FLOPs, then fewer params, then the smaller arch tuple.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch

from utils import files
from utils.checkpoints import io as checkpoint
from utils.cli.common import UserError
from utils.checkpoints.original import release_config
from utils.spaces import ArchError, SpaceConfig, get_space

LOG_PTH = "ea_results.pth.tar"
LOG_JSON = "ea_results.json"
# score_kind: the scorer's name (utils.search.scorers.SCORERS). A log of ours that does
# not record it was scored by the BN indicator; an original SPOS log is SPOS accuracy.
UNRECORDED_SCORER = "indicator"
SPOS_SCORER = "accuracy"


def rank_key(c: dict) -> tuple:
    """Best first: higher score, then fewer FLOPs (unknown: last), fewer params, then the
    smaller arch tuple. The one ranking of the EA's top-k, eval.py and retrain's pick."""
    return (-c["score"], c["flops"] if c.get("flops") is not None else float("inf"),
            c.get("params") or 0, tuple(c["arch"]))


# ---- writing --------------------------------------------------------------------------

def write_log(log_dir: str, pth_obj: dict, json_obj: dict | None) -> None:
    """Both files, each atomically (the .pth.tar first: it is the resume state)."""
    os.makedirs(log_dir, exist_ok=True)
    checkpoint.save_atomic(pth_obj, os.path.join(log_dir, LOG_PTH))
    if json_obj is not None:
        files.write_json_atomic(json_obj, os.path.join(log_dir, LOG_JSON), indent=None)


def candidate_list(vis_dict: dict) -> list[dict]:
    """JSON-ready candidates of a vis_dict, in the order they were scored."""
    return [dict(arch=list(a), score=v["score"], flops=v["flops"], params=v.get("params"),
                 generation=v.get("generation"), origin=v.get("origin"))
            for a, v in vis_dict.items() if "score" in v]


# ---- reading --------------------------------------------------------------------------

def _numpy_safe_globals() -> list:
    """numpy scalar reconstructors (reference logs may hold numpy floats), by both names."""
    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    out = [scalar, reconstruct, np.ndarray, np.dtype,
           (scalar, "numpy.core.multiarray.scalar"),
           (reconstruct, "numpy.core.multiarray._reconstruct")]
    for t in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        out.append(type(np.dtype(t)))
    return out


def load_pth(path: str) -> dict:
    """A .pth.tar log, loaded weights_only (numpy scalars of reference logs allowed)."""
    try:
        return checkpoint.load(path)
    except UserError as first:
        # Only data types are allowed here (no code), so this stays a safe load.
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - report the original, clearer failure
            raise first from None
        if not isinstance(obj, dict):
            raise first from None
        return obj


def _num(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        return float(v.reshape(-1)[0].item()) if v.numel() else None
    if isinstance(v, (int, float, np.generic)):
        return float(v)
    return None


def _score_of(info: dict) -> float | None:
    """Higher-is-better score of a vis_dict entry: score, acc, or minus err."""
    for key, sign in (("score", 1.0), ("acc", 1.0), ("top1", 1.0), ("err", -1.0)):
        if key in info:
            v = _num(info[key])
            if v is not None:
                return sign * v
    return None


def _spos_err(info: dict) -> tuple[float, float | None] | None:
    """(top-1, top-5) error of an original SPOS vis_dict entry, whose "err" is the tuple
    (or list) its tester returns; None for any other entry."""
    err = info.get("err")
    if not isinstance(err, (tuple, list)) or not err:
        return None
    top1 = _num(err[0])
    top5 = _num(err[1]) if len(err) > 1 else None
    return None if top1 is None else (top1, top5)


def _from_pth(obj: dict, path: str) -> dict:
    ours = obj.get("kind") == "search"
    if not ours and "vis_dict" not in obj:
        raise UserError(f"{path} is not a search log (no vis_dict)")
    if ours:
        cfg = SpaceConfig.from_dict(obj["config"])
    else:
        cfg = release_config()  # the reference searched this space only
    space = get_space(cfg)
    table = None
    if not ours:
        from utils.flops.table import load_table
        table = load_table(cfg)
    first_gen: dict[tuple, int] = {}
    for g, pop in enumerate(obj.get("memory") or []):
        for a in pop:
            first_gen.setdefault(tuple(int(x) for x in a), g)
    vis = {a: v for a, v in (obj.get("vis_dict") or {}).items() if isinstance(v, dict)}
    spos = {a: e for a, v in vis.items() if (e := _spos_err(v)) is not None}
    # SPOS's tester returns errors as fractions (1 - acc / 100); percents are also taken.
    pct = 100.0 if spos and max(e[0] for e in spos.values()) <= 1.0 else 1.0
    cands = []
    for arch, info in vis.items():
        is_spos, top5 = arch in spos, None
        if is_spos:
            score = 100.0 - pct * spos[arch][0]
            top5 = None if spos[arch][1] is None else 100.0 - pct * spos[arch][1]
        else:
            score = _score_of(info)
        if score is None:
            continue  # the reference also kept rejected/unscored proposals
        try:
            arch = tuple(int(a) for a in (arch if not isinstance(arch, str) else arch.split()))
        except (TypeError, ValueError):
            raise UserError(f"cannot read search log {path}: its vis_dict has the key "
                            f"{arch!r:.60}, not an architecture") from None
        if table is not None:
            try:
                space.validate(arch)
                flops, params = table.flops_of(arch), table.params_of(arch)
            except ArchError:
                flops, params = _num(info.get("flops")), None
        else:
            flops, params = info.get("flops"), info.get("params")
        cands.append(dict(arch=list(arch), score=score, flops=flops, params=params,
                          generation=info.get("generation", first_gen.get(arch)),
                          **(dict(top5=top5) if is_spos else {})))
    exact = obj.get("exact") if ours else None
    # The scorer's name (utils.search.scorers): ours record it; a reference log is SPOS
    # accuracy when its errors say so, else of unknown kind (BN-NAS wrote no name).
    spos_log = bool(spos) and not ours
    kind = UNRECORDED_SCORER if ours else (SPOS_SCORER if spos_log else "unknown")
    extra = {} if not spos_log else dict(
        score_note="top-1 %, " + ("100 x (1 - the SPOS log's top-1 error)" if pct == 100.0
                                  else "100 - the SPOS log's top-1 error %"))
    return dict(source="pth" if ours else "reference", path=path, config=cfg.to_dict(),
                score_kind=obj.get("score_kind", kind), **extra,
                method=obj.get("method", "ea"), flops_limit=obj.get("flops_limit"),
                candidates=cands, exact=exact, finished=obj.get("finished", True))


def load_log(log_dir: str) -> dict:
    """The log of `log_dir` (JSON twin preferred, else ours or a reference .pth.tar).

    Returns a dict with at least: source, config (dict), score_kind, method, flops_limit,
    candidates (list of {arch, score, flops, params, generation}), exact (dict or None).
    """
    if os.path.isfile(log_dir):  # a log file named directly
        path_json = log_dir if log_dir.endswith(".json") else None
        path_pth = None if path_json else log_dir
    else:
        if not os.path.isdir(log_dir):
            raise UserError(f"search log folder not found: {log_dir}")
        path_json = os.path.join(log_dir, LOG_JSON)
        path_pth = os.path.join(log_dir, LOG_PTH)
        if not os.path.exists(path_json):
            path_json = None
        if not os.path.exists(path_pth):
            path_pth = None
    if path_json:
        try:
            with open(path_json) as f:
                d = json.load(f)
            d["config"], d["candidates"]  # noqa: B018 - the keys every reader needs
        except (OSError, ValueError, KeyError, TypeError) as e:
            if path_pth is None:
                raise UserError(f"cannot read search log {path_json}: {e}") from None
        else:
            d["source"], d["path"] = "json", path_json
            check_entries(d, path_json)
            return d
    if path_pth:
        log = _from_pth(load_pth(path_pth), path_pth)
        _refuse_nonfinite(log, path_pth)
        return log
    raise UserError(f"no search log in {log_dir} (expected {LOG_JSON} or {LOG_PTH}; "
                    f"run search/ea.py first)")


def _is_num(v: Any) -> bool:
    """A finite int or float (not a bool): nan/inf scores would break every ranking."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


NONFINITE_HINT = "the search ran on a diverged supernet; search again with a sound one"


def _refuse_nonfinite(log: dict, path: str) -> None:
    """One line for a .pth.tar log holding a nan/inf score (JSON logs: check_entries)."""
    entries = list(log.get("candidates") or []) + ([log["exact"]] if log.get("exact") else [])
    for c in entries:
        v = c.get("score")
        if v is not None and not _is_num(v):
            raise UserError(f"search log {path}: architecture {c.get('arch')} has score {v} "
                            f"({NONFINITE_HINT})")


def check_entries(log: dict, path: str) -> None:
    """Refuse, in one line, a JSON log whose config or entries are malformed: every
    candidate (and the exact optimum) needs an architecture valid for the log's space,
    a numeric score (or none: unscored) and non-negative numeric FLOPs / params (or none)."""
    try:
        cfg = SpaceConfig.from_dict(log["config"]) if log.get("config") else release_config()
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"search log {path} has a malformed config ({e})") from None
    space = get_space(cfg)
    cands = log.get("candidates")
    if not isinstance(cands, list):
        raise UserError(f"search log {path}: 'candidates' is not a list")
    entries = [(f"candidate {i}", c) for i, c in enumerate(cands)]
    if log.get("exact") is not None:
        entries.append(("the exact optimum", log["exact"]))
    for name, c in entries:
        if not isinstance(c, dict):
            raise UserError(f"search log {path}: {name} is not an object")
        arch = c.get("arch")
        if not isinstance(arch, list) or not all(isinstance(a, int) and not isinstance(a, bool)
                                                 for a in arch):
            raise UserError(f"search log {path}: {name} has arch {str(arch)[:80]}, not a list "
                            f"of op indices")
        try:
            space.validate(arch)
        except (ArchError, ValueError) as e:
            raise UserError(f"search log {path}: {name} is not an architecture of its space "
                            f"({e})") from None
        if c.get("score") is not None and not _is_num(c["score"]):
            finite = not isinstance(c["score"], float) or math.isfinite(c["score"])
            raise UserError(f"search log {path}: {name} has score {c['score']!r}, "
                            + ("not a number" if finite else f"not finite ({NONFINITE_HINT})"))
        for key in ("flops", "params"):
            v = c.get(key)
            if v is not None and (not _is_num(v) or v < 0):
                raise UserError(f"search log {path}: {name} has {key} {v!r}, not a "
                                f"non-negative number")


def ranked(log: dict) -> list[dict]:
    """Every logged candidate plus the exact optimum, deduplicated, best first.

    Each entry: arch (list), score, flops, params, generation, and "found_by" ("ea",
    "exact" or "ea+exact").
    """
    by_arch: dict[tuple, dict] = {}
    for c in log.get("candidates") or []:
        if c.get("score") is None:
            continue
        entry = dict(c, arch=[int(a) for a in c["arch"]], found_by="ea")
        by_arch.setdefault(tuple(entry["arch"]), entry)
    ex = log.get("exact")
    if ex and ex.get("arch") is not None and ex.get("score") is not None:
        key = tuple(int(a) for a in ex["arch"])
        if key in by_arch:
            by_arch[key]["found_by"] = "ea+exact"
        else:
            by_arch[key] = dict(arch=list(key), score=ex["score"], flops=ex.get("flops"),
                                params=ex.get("params"), generation=None, found_by="exact")
    return sorted(by_arch.values(), key=rank_key)


def best_arch(log_dir: str) -> tuple[tuple[int, ...], SpaceConfig]:
    """The architecture eval.py ranks first, validated, with its space config."""
    log = load_log(log_dir)
    cfg = SpaceConfig.from_dict(log["config"]) if log.get("config") else release_config()
    r = ranked(log)
    path = log.get("path", log_dir)
    if not r:
        raise UserError(f"search log {path} has no scored candidates")
    arch = get_space(cfg).validate(r[0]["arch"])
    _check_within_limits(log, cfg, arch, path)
    return arch, cfg


def _check_within_limits(log: dict, cfg: SpaceConfig, arch, path: str) -> None:
    """The chosen architecture's FLOPs / params, recomputed from the lookup table, must
    respect the log's limits: a log edited by hand or damaged is refused in one line."""
    from utils.flops.table import load_table
    table = load_table(cfg)
    text = " ".join(map(str, arch))
    for key, limit, cost in (("FLOPs", log.get("flops_limit"), table.flops_of(arch)),
                             ("params", log.get("params_limit"), table.params_of(arch))):
        if limit is None:
            continue
        if not _is_num(limit) or limit <= 0:
            raise UserError(f"search log {path} has a malformed {key} limit {limit!r}")
        if cost > limit:
            raise UserError(f"search log {path}: its best architecture '{text}' has "
                            f"{cost / 1e6:.2f}M {key} (recomputed), over the log's limit "
                            f"{limit / 1e6:.2f}M: the log was edited or damaged")
