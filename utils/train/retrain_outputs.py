"""Stage 3's output folder eval-NAME/: its file names, and keeping best.pth.tar and
result.json consistent with checkpoint.pth.tar.

    save_dir_of(config) -> "eval-NAME"
    reconcile_best(state, ckpt_path, best_path) -> the best (top1, top5, iters) to go on with
    result_record(...) / fix_result(...)   # what result.json holds; repair a finished run's
    report_finished(state, path, best)     # the line of a run that is already finished
    data_settings(args) -> {dataset, val_crop_pct}   # recorded in result.json / eval.json
    data_note(dataset, crop_pct) -> "" or "; dataset X; val crop Y" for the log
"""
from __future__ import annotations

import json
import os

from utils import files
from utils.checkpoints import io as ckpt
from utils.errors import UserError
from utils.logs import get_logger
from utils.spaces import SpaceConfig

log = get_logger(__name__)

# Files of eval-NAME/ written atomically (stale temp files of a killed save are removed).
SETTINGS_NAME, EVAL_SETTINGS_NAME = "config.yaml", "eval_config.yaml"
OUTPUT_FILES = ("checkpoint.pth.tar", "best.pth.tar", "result.json", "metrics.jsonl",
                "eval.json", SETTINGS_NAME, EVAL_SETTINGS_NAME)
LOCK_NAME = ".lock"
LOG_NAME = "log.txt"  # every line logged, with a timestamp, as the reference kept it


def save_dir_of(config) -> str:
    if config.save is not None and not config.save.strip():
        raise UserError("--save is empty (an unset variable?): give a run name, or leave "
                        "the flag out for eval-retrain/")
    return f"eval-{config.save or 'retrain'}"


def reconcile_best(state: dict, ckpt_path: str, best_path: str) -> dict:
    """The best-so-far (top1, top5, iters) to continue with, made consistent with what
    best.pth.tar holds (rank 0). Writes go best.pth.tar first, then checkpoint.pth.tar;
    a crash between them leaves best.pth.tar ahead of the checkpoint's record:
    - the checkpoint is itself the best it records (saved right after that validation)
      but best.pth.tar holds another iteration or is missing: rewrite best from it;
    - else best.pth.tar holds a valid state of this run: continue with what it holds
      (so result.json and the log report that file's iteration and top-1);
    - else (missing / unreadable, not recreatable): warn and track the best anew."""
    rec = dict(top1=float(state.get("best_acc_top1", -1.0)),
               top5=float(state.get("best_acc_top5", 0.0)), iters=int(state.get("best_iters", 0)))
    have, why = None, "is missing"
    if os.path.exists(best_path):
        try:
            b = ckpt.load(best_path)
        except UserError as e:
            b, why = None, f"is unreadable ({e})"
        if b is not None:
            if b.get("kind") == "subnet" and b.get("arch") == state.get("arch") and \
                    b.get("config") == state.get("config") and "iters" in b:
                have = dict(top1=float(b.get("best_acc_top1", -1.0)),
                            top5=float(b.get("best_acc_top5", 0.0)), iters=int(b["iters"]))
            else:
                why = "is not a checkpoint of this run"
    if have is not None and (have["iters"], have["top1"]) == (rec["iters"], rec["top1"]):
        return rec
    if have is None and rec["iters"] <= 0:
        return rec  # no validation yet: no best to hold
    here = int(state.get("iters", -1))
    if rec["iters"] > 0 and here == rec["iters"] and not state.get("eval_pending"):
        ckpt.save_atomic(state, best_path)
        held = "missing" if have is None else f"iteration {have['iters']}"
        log.info(f"note: {best_path} held {held}, not the best iteration {rec['iters']} that "
                 f"{ckpt_path} records; rewrote it from the checkpoint (which is that "
                 f"iteration)")
        return rec
    if have is not None:
        log.info(f"warning: {best_path} holds iteration {have['iters']} (top-1 "
                 f"{have['top1']:.4f}), not iteration {rec['iters']} that {ckpt_path} records "
                 f"as the best (a save was interrupted); continuing with what {best_path} "
                 f"holds")
        return have
    log.info(f"warning: {best_path} {why} and {ckpt_path} (iteration {here}) cannot recreate "
             f"the best iteration {rec['iters']} it records; the best is tracked anew from "
             f"the next validation")
    return dict(top1=-1.0, top5=0.0, iters=0)


def data_settings(args) -> dict:
    """Which data validation measured: the dataset and the validation crop fraction (from
    resolved flags, or a checkpoint's saved args: older ones mean imagefolder, 0.875)."""
    from utils.data.datasets import DEFAULT_DATASET
    from utils.data.transforms import recorded_crop_pct
    saved = args if isinstance(args, dict) else vars(args or {})
    return dict(dataset=saved.get("dataset") or DEFAULT_DATASET,
                val_crop_pct=recorded_crop_pct(saved))


def data_note(dataset, crop_pct: float) -> str:
    """The log's words on the data (`dataset`: a DatasetSpec or a name) where they are not
    the defaults (so a default run's lines read as before)."""
    from utils.data.datasets import DEFAULT_DATASET
    from utils.data.transforms import VAL_CROP_FRACTION
    name = getattr(dataset, "name", dataset)
    out = "" if name == DEFAULT_DATASET else f"; dataset {name}"
    return out + ("" if crop_pct == VAL_CROP_FRACTION else f"; val crop {crop_pct:g}")


def result_record(arch, space_cfg: SpaceConfig, info: dict, iters: int, best: dict,
                  last_eval: dict, train_time, data: dict | None = None) -> dict:
    """What result.json holds: the best (as best.pth.tar holds it) and final accuracy,
    and `data` (data_settings: what validation measured)."""
    return dict(arch=list(arch), config=space_cfg.to_dict(), **info, iters=iters,
                best_acc_top1=best["top1"], best_acc_top5=best["top5"], best_iters=best["iters"],
                final_acc_top1=last_eval.get("top1"), final_acc_top5=last_eval.get("top5"),
                train_time=train_time, **(data or {}))


def report_finished(state: dict, path: str, best: dict | None = None) -> None:
    last = state.get("last_eval") or {}
    best = best or dict(top1=state.get("best_acc_top1", float("nan")),
                        iters=state.get("best_iters"))
    log.info(f"{path}: retraining already finished ({state['iters']}/{state['total_iters']} "
             f"iterations); best valid_acc_top1 {best['top1']:.4f} "
             f"(iteration {best['iters']}), final valid_acc_top1 "
             f"{last.get('top1', float('nan')):.4f} valid_acc_top5 "
             f"{last.get('top5', float('nan')):.4f}")


def fix_result(save_dir: str, state: dict, arch, space_cfg: SpaceConfig, best: dict,
               data: dict | None = None) -> None:
    """A finished run's result.json, rewritten when it is missing or does not report what
    best.pth.tar holds (a run killed between its last saves). `data`: as result_record
    (default: what the checkpoint's args record)."""
    path = os.path.join(save_dir, "result.json")
    want = result_record(arch, space_cfg,
                         dict(flops=state.get("flops"), params=state.get("params")),
                         int(state["iters"]), best, state.get("last_eval") or {},
                         state.get("train_time"),
                         data if data is not None else data_settings(state.get("args") or {}))
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == want[k] for k in
                                     ("iters", "best_acc_top1", "best_iters")):
        return
    files.write_json_atomic(want, path)
    log.info(f"note: {'wrote the missing' if old is None else 'corrected'} {path} (best "
             f"top-1 {best['top1']:.4f} at iteration {best['iters']}, as best.pth.tar holds)")


__all__ = ["save_dir_of", "reconcile_best", "result_record", "report_finished", "fix_result",
           "data_settings", "data_note",
           "SETTINGS_NAME", "EVAL_SETTINGS_NAME", "OUTPUT_FILES", "LOCK_NAME", "LOG_NAME"]
