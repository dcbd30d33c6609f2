"""Figures of a search log (search/eval.py --plot) and of a ranking study (tools/ranking_study.py).

matplotlib's object API on the Agg canvas (no pyplot, no display, no global state);
every PNG is written atomically. Each function returns the paths it wrote.

    plot_search_log(load_log("search/log"), "search/log")
        -> search_generations.png, search_flops_vs_score.png, search_indicator_heatmap.png
    plot_ranking(json.load(open("docs/ranking/ranking.json")), "docs/ranking")
        -> ranking_scatter.png, ranking_tau_vs_epoch.png
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from utils.files import write_atomic
from utils.search.log import UNRECORDED_SCORER, rank_key
from utils.search.pareto import pareto_front
from utils.search.scorers import scorer_class

DPI = 130


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    write_atomic(path, ".png", lambda f: fig.savefig(f, format="png", dpi=DPI,
                                                      bbox_inches="tight"), faults=False)
    return path


def _score_label(log: dict) -> str:
    """The y axis of a log's scores: its scorer's text ("score" for a name not known)."""
    return scorer_class(log.get("score_kind")).axis_label


def generation_stats(candidates: list[dict]) -> dict[str, np.ndarray] | None:
    """Per generation: best score so far, mean/min/max of the candidates it added."""
    gens = [c.get("generation") for c in candidates]
    if not candidates or any(g is None for g in gens):
        return None
    g = np.array(gens, dtype=np.int64)
    s = np.array([c["score"] for c in candidates], dtype=np.float64)
    steps = np.arange(g.max() + 1)
    mean, lo, hi = (np.full(len(steps), np.nan) for _ in range(3))
    for k in steps:
        sel = s[g == k]
        if sel.size:
            mean[k], lo[k], hi[k] = sel.mean(), sel.min(), sel.max()
    best = np.maximum.accumulate(np.where(np.isnan(hi), -np.inf, hi))
    return dict(generation=steps, best=best, mean=mean, min=lo, max=hi)


# ---- search log ----------------------------------------------------------------------

def _ea_pick(log: dict) -> dict | None:
    cands = [c for c in log.get("candidates") or [] if c.get("score") is not None]
    return min(cands, key=rank_key) if cands else None


def _plot_generations(log: dict, path: str) -> str | None:
    st = generation_stats(log.get("candidates") or [])
    if st is None:
        return None
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    x = st["generation"]
    ax.fill_between(x, st["min"], st["max"], color="tab:blue", alpha=0.15,
                    label="range of the generation's new candidates")
    ax.plot(x, st["mean"], "o-", color="tab:blue", ms=3, label="mean of new candidates")
    ax.plot(x, st["best"], "s-", color="tab:red", ms=3, label="best so far")
    ex = log.get("exact")
    if ex and ex.get("score") is not None:
        ax.axhline(ex["score"], color="black", ls="--", lw=1,
                   label=f"proven optimum ({ex['score']:.4f})")
    ax.set_xlabel("generation (0 = initial population)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(_score_label(log))
    ax.set_title(f"Evolutionary search: {len(log.get('candidates') or [])} candidates scored")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def _legend_below(ax, ncol: int = 2) -> None:
    """Legend under the axes, so it never hides data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=ncol,
                  frameon=False)


def _plot_flops_vs_score(log: dict, path: str) -> str | None:
    cands = [c for c in log.get("candidates") or []
             if c.get("score") is not None and c.get("flops") is not None]
    ex = log.get("exact")
    if not cands and not ex:
        return None
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    if cands:
        f = np.array([c["flops"] for c in cands], dtype=np.float64) / 1e6
        s = np.array([c["score"] for c in cands], dtype=np.float64)
        gens = [c.get("generation") for c in cands]
        if all(g is not None for g in gens):
            sc = ax.scatter(f, s, c=gens, cmap="viridis", s=12, alpha=0.75, lw=0)
            fig.colorbar(sc, ax=ax, label="generation first scored",
                         ticks=MaxNLocator(integer=True))
        else:
            ax.scatter(f, s, s=12, alpha=0.6, lw=0, color="tab:blue")
        front = pareto_front(f, s)
        ax.step(f[front], s[front], where="post", color="tab:orange", lw=1.5,
                label=f"Pareto front ({len(front)})")
        ax.plot(f[front], s[front], "o", color="tab:orange", ms=4)
    pick = _ea_pick(log)
    if pick is not None:
        ax.plot(pick["flops"] / 1e6, pick["score"], "*", color="red", ms=16, mec="black",
                label=f"EA pick ({pick['score']:.4f})")
    if ex and ex.get("score") is not None and ex.get("flops") is not None:
        ax.plot(ex["flops"] / 1e6, ex["score"], "D", mfc="none", mec="black", mew=1.8, ms=12,
                label=f"proven optimum ({ex['score']:.4f})")
    limit = log.get("flops_limit")
    if limit:
        ax.axvline(limit / 1e6, color="gray", ls="--", lw=1,
                   label=f"FLOPs limit ({limit / 1e6:.2f}M)")
    ax.set_xlabel("FLOPs (M multiply-adds)")
    ax.set_ylabel(_score_label(log))
    ax.set_title(f"Every scored candidate ({len(cands)}) and the Pareto front")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def _plot_heatmap(log: dict, path: str) -> str | None:
    m = log.get("indicator")
    if m is None:
        return None
    m = np.asarray(m, dtype=np.float64)
    n_ops = m.shape[1] - 1  # the last column is the skip (always 0)
    op_names = list(log.get("op_names") or [f"op {j}" for j in range(n_ops)])[:n_ops]
    allowed = np.ones_like(m, dtype=bool)
    if log.get("config"):
        from utils.spaces import SpaceConfig, get_space
        allowed = get_space(SpaceConfig.from_dict(log["config"])).allowed_mask()
    # A skip column only where skipping is a choice (not where it is forced).
    optional_skip = bool((allowed[:, -1] & allowed[:, :-1].any(axis=1)).any())
    cols = n_ops + 1 if optional_skip else n_ops
    names = op_names + (["skip"] if optional_skip else [])
    vals, ok = m[:, :cols], allowed[:, :cols]
    forced = ~allowed[:, :n_ops].any(axis=1)
    rows = vals.shape[0]
    fig = Figure(figsize=(1.05 * cols + 2.8, 0.34 * rows + 1.9))
    ax = fig.add_subplot()
    shown = np.where(ok, vals, np.nan)
    finite = shown[np.isfinite(shown) & (np.arange(cols) < n_ops)[None, :]]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = colormaps["magma"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(shown, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, label="mean |gamma| of the op's last BN", fraction=0.05)
    mid = (vmin + vmax) / 2
    for i in range(rows):
        for j in range(cols):
            if ok[i, j]:
                ax.text(j, i, f"{vals[i, j]:.3f}", ha="center", va="center", fontsize=6.5,
                        color="black" if vals[i, j] > mid else "white")
    # Chosen ops as cell outlines (the values stay readable): optimum outside, EA inside.
    marks = [(log.get("exact"), 0.04, "lime", "-", "proven optimum"),
             (_ea_pick(log), 0.16, "tab:cyan", "--", "EA pick")]
    for entry, inset, color, style, label in marks:
        if not entry or entry.get("arch") is None:
            continue
        first = True
        for i, op in enumerate(int(a) for a in entry["arch"]):
            j = n_ops if op < 0 else op
            if op < 0 and (not optional_skip or forced[i]):
                continue
            ax.add_patch(Rectangle((j - 0.5 + inset, i - 0.5 + inset), 1 - 2 * inset,
                                   1 - 2 * inset, fill=False, ec=color, lw=1.8, ls=style,
                                   label=label if first else None))
            first = False
    ax.set_xticks(range(cols), names, rotation=30, ha="right", fontsize=8)
    # Layers whose ops the indicator cannot tell apart (utils/search/diagnostics.py).
    flat: set[int] = set()
    kind = log.get("score_kind", UNRECORDED_SCORER)
    if log.get("config") and scorer_class(kind).bn_diagnostics:
        from utils.search.diagnostics import diagnose
        from utils.spaces import SpaceConfig, get_space
        flat = set(diagnose(get_space(SpaceConfig.from_dict(log["config"])), m)["flat_layers"])
    ax.set_yticks(range(rows), [f"layer {i}" + (" (fixed skip)" if forced[i] else "")
                                + (" FLAT" if i in flat else "") for i in range(rows)],
                  fontsize=7)
    for label in ax.get_yticklabels():
        if label.get_text().endswith(" FLAT"):
            label.set_color("tab:red")
    ax.set_title("BN indicator matrix (layers x candidate ops)"
                 + (f"\nFLAT: {len(flat)} layers whose ops differ by < 5% of the largest "
                    f"layer spread" if flat else ""), fontsize=10 if flat else None)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2,
                  frameon=False)
    return _save(fig, path)


SEARCH_PLOTS = (("search_generations.png", _plot_generations),
                ("search_flops_vs_score.png", _plot_flops_vs_score),
                ("search_indicator_heatmap.png", _plot_heatmap))


def plot_search_log(log: dict, out_dir: str) -> tuple[list[str], list[str]]:
    """(written paths, notes on the plots this log has no data for)."""
    written, notes = [], []
    why = {"search_generations.png": "the log records no generation per candidate",
           "search_flops_vs_score.png": "the log has no scored candidates",
           "search_indicator_heatmap.png": "the log holds no indicator matrix (only "
                                           "ea_results.json written by this project has it)"}
    for name, fn in SEARCH_PLOTS:
        p = fn(log, os.path.join(out_dir, name))
        if p is None:
            notes.append(f"{name} skipped: {why[name]}")
        else:
            written.append(p)
    return written, notes


# ---- ranking study -------------------------------------------------------------------

def _fmt_corr(p: dict) -> str:
    if p.get("tau") is None:
        return "tau n/a"
    lo, hi = p["tau_ci"]
    ci = "" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]"
    return f"tau {p['tau']:+.2f}{ci}, rho {p['rho']:+.2f}"


def _last_of(report: dict, family: str) -> str | None:
    """The predictor of `family` at its last snapshot (or the family itself)."""
    found = [(k, p) for k, p in report["predictor_scores"].items() if p["family"] == family]
    return max(found, key=lambda kp: kp[1].get("iter") or 0)[0] if found else None


SCATTER_PANELS = (("bn_indicator[indicator]", "BN indicator, BN-only supernet"),
                  ("spos_accuracy", "SPOS top-1 on the held-out split (%)"),
                  ("flops", "FLOPs (M)"), ("params", "parameters (M)"),
                  ("synflow", "synflow (log10)"), ("naswot", "NASWOT"),
                  ("grad_norm", "grad-norm"), ("snip", "SNIP"), ("random", "random score"))


def _plot_scatter(report: dict, path: str) -> str:
    truth = np.array([s["top1"] for s in report["subnets"]])
    flops = np.array([s["flops"] for s in report["subnets"]], dtype=np.float64) / 1e6
    under = np.array([s["stratum"] == "under_limit" for s in report["subnets"]])
    stats = report["strata"]["all"]["predictors"]
    panels = []
    for family, label in SCATTER_PANELS:
        name = _last_of(report, family)
        if name is None:
            continue
        x = np.asarray(report["predictor_scores"][name]["scores"], dtype=np.float64)
        if family in ("flops", "params"):
            x = x / 1e6
        if family == "synflow":
            x = np.log10(np.maximum(x, 1e-300))
        it = report["predictor_scores"][name].get("iter")
        panels.append((label + (f" (iter {it})" if it is not None else ""), x, stats[name]))
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(4.3 * cols, 3.6 * rows), layout="constrained")
    gt = report["ground_truth"]
    fig.suptitle(f"Predictors vs ground truth ({len(truth)} subnets trained from scratch, "
                 f"{gt['iters']} iterations x {len(gt['seeds'])} seeds); colour = FLOPs, "
                 f"circles under the limit, squares over; tau over all subnets", fontsize=10)
    sc = None
    for k, (label, x, st) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for mask, marker in ((under, "o"), (~under, "s")):
            if mask.any():
                sc = ax.scatter(x[mask], truth[mask], c=flops[mask], cmap="viridis", s=22,
                                marker=marker, edgecolors="black", linewidths=0.3,
                                vmin=flops.min(), vmax=flops.max())
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("ground-truth top-1 (%)", fontsize=9)
        ax.set_title(_fmt_corr(st), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    if sc is not None:
        fig.colorbar(sc, ax=fig.axes, label="FLOPs (M)", shrink=0.8)
    return _save(fig, path)


def _ci_arrays(pts: list[dict], stat: str) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([c[f"{stat}_ci"][0] if c[f"{stat}_ci"][0] is not None else np.nan
                   for c in pts])
    hi = np.array([c[f"{stat}_ci"][1] if c[f"{stat}_ci"][1] is not None else np.nan
                   for c in pts])
    return lo, hi


def _plot_curves(report: dict, path: str) -> str:
    """Kendall tau against supernet iterations, per supernet kind, in both strata."""
    strata = list(report["curves"])
    fig = Figure(figsize=(6.0 * len(strata) + 2.5, 4.2), layout="constrained")
    colors = ["tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:blue", "tab:cyan"]
    flat = {"flops": ("tab:green", "FLOPs"), "params": ("tab:purple", "params")}
    for k, stratum in enumerate(strata):
        ax = fig.add_subplot(1, len(strata), k + 1)
        for j, (fam, pts) in enumerate(sorted(report["curves"][stratum].items())):
            pts = [c for c in pts if c["tau"] is not None]
            if not pts:
                continue
            x = np.array([c["iter"] for c in pts], dtype=np.float64)
            v = np.array([c["tau"] for c in pts])
            lo, hi = _ci_arrays(pts, "tau")
            color = colors[j % len(colors)]
            ax.plot(x, v, marker="o", color=color, label=fam)
            ax.fill_between(x, lo, hi, color=color, alpha=0.12)
        ag = report["strata"][stratum].get("ground_truth_agreement")
        if ag and ag.get("tau") is not None:
            ax.axhline(ag["tau"], color="black", ls=":", lw=1.5,
                       label=f"ground truth vs itself ({ag['tau']:+.2f})")
        for fam, (color, label) in flat.items():
            st = report["strata"][stratum]["predictors"].get(fam)
            if st and st["tau"] is not None:
                ax.axhline(st["tau"], color=color, ls="--", lw=1.2,
                           label=f"{label} ({st['tau']:+.2f})")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("supernet training iterations")
        ax.set_ylabel("Kendall tau vs ground truth")
        ax.set_ylim(-1.0, 1.0)
        ax.grid(alpha=0.3)
        ax.set_title(f"{stratum} ({report['strata'][stratum]['subnets']} subnets; shaded: "
                     f"95% interval)", fontsize=10)
        if k == len(strata) - 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


def _plot_predictors(report: dict, path: str) -> str:
    """Every predictor's tau with its interval, side by side, in both strata."""
    fams = [f for f, _ in SCATTER_PANELS] + sorted(
        {p["family"] for p in report["predictor_scores"].values()} - {f for f, _ in
                                                                       SCATTER_PANELS})
    names = [n for n in (_last_of(report, f) for f in fams) if n is not None]
    strata = list(report["strata"])
    fig = Figure(figsize=(9.5, 0.42 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    for j, stratum in enumerate(strata):
        st = report["strata"][stratum]["predictors"]
        v = np.array([st[n]["tau"] if st[n]["tau"] is not None else np.nan for n in names])
        lo, hi = _ci_arrays([st[n] for n in names], "tau")
        off = (j - (len(strata) - 1) / 2) * 0.3
        ax.errorbar(v, y + off, xerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], fmt="o",
                    capsize=3,
                    label=f"{stratum} ({report['strata'][stratum]['subnets']} subnets)")
        ag = report["strata"][stratum].get("ground_truth_agreement")
        if ag and ag.get("tau") is not None:
            ax.axvline(ag["tau"], ls=":", lw=1.2, color=f"C{j}",
                       label=f"ground truth vs itself, {stratum} ({ag['tau']:+.2f})")
    ax.axvline(0.0, color="black", lw=0.6)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-1.0, 1.0)
    ax.set_xlabel("Kendall tau vs ground truth (95% bootstrap interval)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7.5, loc="lower right")
    return _save(fig, path)


def _plot_pilot(report: dict, path: str) -> str:
    """The pilot: seed-to-seed tau of the ground truth against training cost."""
    pts = [p for p in report["pilot"]["budgets"]
           if p["agreement"] and p["agreement"]["tau"] is not None]
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        x = np.array([p["seconds_per_training"] for p in pts])
        v = np.array([p["agreement"]["tau"] for p in pts])
        lo, hi = _ci_arrays([p["agreement"] for p in pts], "tau")
        ax.errorbar(x, v, yerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], fmt="o-",
                    capsize=3)
        for p, xi, vi in zip(pts, x, v):
            ax.annotate(f"{p['iters']} it, {p['mean_top1']:.1f}%", (xi, vi), fontsize=8,
                        xytext=(4, -12), textcoords="offset points")
    # The full ground truth measures the same agreement on every subnet at its budget.
    gt = report.get("ground_truth", {})
    ag = gt.get("agreement")
    if ag and ag.get("tau") is not None:
        lo, hi = (np.nan if v is None else v for v in ag["tau_ci"])
        ax.errorbar([gt["seconds_per_training"]], [ag["tau"]],
                    yerr=[[np.nan_to_num(ag["tau"] - lo)], [np.nan_to_num(hi - ag["tau"])]],
                    fmt="s", color="tab:green", capsize=3,
                    label=f"ground truth: {len(report.get('subnets', []))} subnets, "
                          f"{gt['iters']} it")
    ax.axhline(report["pilot"]["target"], color="tab:red", ls="--", lw=1,
               label=f"target {report['pilot']['target']}")
    ax.set_xlabel("seconds per training (one thread)")
    ax.set_ylabel("seed-to-seed Kendall tau")
    ax.set_ylim(-1.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Pilot: {pts[0]['subnets'] if pts else 0} subnets trained twice per budget",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ranking(report: dict, out_dir: str) -> list[str]:
    return [_plot_scatter(report, os.path.join(out_dir, "ranking_scatter.png")),
            _plot_curves(report, os.path.join(out_dir, "ranking_tau_vs_iterations.png")),
            _plot_predictors(report, os.path.join(out_dir, "ranking_predictors.png")),
            _plot_pilot(report, os.path.join(out_dir, "ranking_pilot.png"))]
