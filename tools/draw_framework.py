"""Draw framework.png: the three BN-NAS stages (supernet training, BN-indicator
search, retraining) left to right.

    python3 tools/draw_framework.py [--out framework.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or servers

import matplotlib.pyplot as plt
from matplotlib.patches import Arc, Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

REPO_ROOT = Path(__file__).resolve().parents[1]

# 1 data unit == 10 px at the default size, so coordinates read as pixels / 10.
WIDTH, HEIGHT, DPI = 148, 60, 100

GREY, GREY_EDGE, GREY_TEXT = "#d5d8dd", "#8a9099", "#4a4f57"
ORANGE, ORANGE_EDGE = "#f5a524", "#c77800"
BLUE = "#1f6fd1"
GREEN, GREEN_EDGE = "#bfe6c4", "#2e8b3e"
INK = "#1d2330"
PANEL_FILL, PANEL_EDGE = "#f7f9fc", "#cfd7e3"
NOTE_FILL, NOTE_EDGE = "#fff6e5", "#f0c36d"


def box(ax, x, y, w, h, fill, edge, lw=1.2, rounding=0.6, z=2, **kw):
    """Rounded box with lower-left corner (x, y)."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={rounding}",
                           facecolor=fill, edgecolor=edge, linewidth=lw, zorder=z, **kw)
    ax.add_patch(patch)
    return patch


def text(ax, x, y, s, size=11, z=5, **kw):
    kw.setdefault("ha", "center")
    kw.setdefault("va", "center")
    kw.setdefault("color", INK)
    return ax.text(x, y, s, fontsize=size, zorder=z, **kw)


def arrow(ax, start, end, color=INK, lw=1.4, style="-|>", rad=0.0, z=3, mut=12, **kw):
    patch = FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=mut, color=color,
                            linewidth=lw, connectionstyle=f"arc3,rad={rad}", zorder=z,
                            shrinkA=0, shrinkB=0, **kw)
    ax.add_patch(patch)
    return patch


def lock(ax, cx, cy, s=1.5, color=GREY_TEXT, z=6):
    """Small padlock: body plus shackle, drawn because DejaVu lacks the emoji."""
    ax.add_patch(Rectangle((cx - s / 2, cy - s / 2), s, 0.7 * s, facecolor=color,
                           edgecolor=color, zorder=z))
    ax.add_patch(Arc((cx, cy + 0.2 * s), 0.62 * s, 0.9 * s, theta1=0, theta2=180,
                     color=color, linewidth=1.5, zorder=z))


def stage_badge(ax, x, y, n):
    ax.add_patch(Circle((x, y), 1.5, facecolor=INK, edgecolor="none", zorder=6))
    text(ax, x, y - 0.05, str(n), size=12, color="white", weight="bold", z=7)


def panel(ax, x0, x1, n, title, subtitle):
    box(ax, x0, 1.5, x1 - x0, 57, PANEL_FILL, PANEL_EDGE, lw=1.5, rounding=1.5, z=0)
    title_artist = text(ax, (x0 + x1) / 2 + 1.2, 55, title, size=15, weight="bold")
    # Badge sits just left of the centred title.
    ax.figure.canvas.draw()
    bb = title_artist.get_window_extent().transformed(ax.transData.inverted())
    stage_badge(ax, bb.x0 - 2.2, 55, n)
    text(ax, (x0 + x1) / 2, 51.3, subtitle, size=11, style="italic", color="#3b4456")


# ---------------------------------------------------------------- stage 1

OPS = ("MB 3×3", "MB 5×5", "MB 7×7")
ROWS_Y = (41.5, 34.0, 26.5)      # candidate rows, top to bottom
PATH = (1, 0, 2)                  # sampled op per layer (row index)
CONV_W, BN_W, OP_H = 9.4, 4.0, 5.2


def candidate(ax, left, y, name, chosen):
    """Grey frozen conv followed by its orange indicator BN."""
    alpha = 1.0 if chosen else 0.55
    box(ax, left, y - OP_H / 2, CONV_W, OP_H, GREY, GREY_EDGE, alpha=alpha)
    lock(ax, left + 1.5, y, s=1.4)
    # Label centred in the space right of the lock.
    text(ax, left + 2.5 + (CONV_W - 2.5) / 2, y, name, size=10, color=GREY_TEXT)
    bn_left = left + CONV_W + 0.4
    box(ax, bn_left, y - OP_H / 2, BN_W, OP_H, ORANGE, ORANGE_EDGE, alpha=alpha)
    text(ax, bn_left + BN_W / 2, y, "BN", size=10, weight="bold", color="#4a2a00")
    if chosen:
        # Blue halo marks the op on this step's sampled path.
        box(ax, left - 0.5, y - OP_H / 2 - 0.5, CONV_W + BN_W + 1.4, OP_H + 1.0, "none",
            BLUE, lw=2.4, rounding=0.9, z=4)
    return left, bn_left + BN_W


def draw_supernet(ax, x0, x1):
    panel(ax, x0, x1, 1, "Supernet training", "10 epochs, only BN parameters train")
    op_w = CONV_W + 0.4 + BN_W
    in_x, out_x, node_r = x0 + 2.9, x1 - 2.9, 1.7
    # Spread the three layers evenly between the input and output nodes.
    gap = ((out_x - in_x - 2 * node_r) - 3 * op_w) / 4
    centers = [in_x + node_r + gap + op_w / 2 + i * (op_w + gap) for i in range(3)]
    mid_y = ROWS_Y[1]
    # Input / output nodes.
    for nx, label in ((in_x, "x"), (out_x, "ŷ")):
        ax.add_patch(Circle((nx, mid_y), node_r, facecolor="white", edgecolor=INK, lw=1.2, zorder=2))
        text(ax, nx, mid_y, label, size=12, style="italic")

    prev_right = [(in_x + node_r, mid_y)]    # all possible sources for the next layer
    prev_chosen = (in_x + node_r, mid_y)
    for layer, cx in enumerate(centers):
        left = cx - op_w / 2
        text(ax, cx, ROWS_Y[0] + 5.0, f"layer {layer + 1}", size=11, weight="bold", color="#3b4456")
        rights = []
        for row, (name, y) in enumerate(zip(OPS, ROWS_Y)):
            chosen = PATH[layer] == row
            l, r = candidate(ax, left, y, name, chosen)
            rights.append((r, y))
            # Faint fan-in: every candidate can follow every previous output.
            for sx, sy in prev_right:
                ax.plot([sx, l], [sy, y], color="#c3cad6", lw=0.8, zorder=1)
            if chosen:
                arrow(ax, prev_chosen, (l - 0.5, y), color=BLUE, lw=2.2, z=4)
                chosen_right = (r + 0.8, y)
        prev_right = rights
        prev_chosen = chosen_right
    for sx, sy in prev_right:
        ax.plot([sx, out_x - node_r], [sy, mid_y], color="#c3cad6", lw=0.8, zorder=1)
    arrow(ax, prev_chosen, (out_x - node_r, mid_y), color=BLUE, lw=2.2, z=4)

    # What one training step does.
    text(ax, (x0 + x1) / 2, 18.2,
         "each step: sample one path uniformly, forward + backward,\n"
         "update only γ, β of the BNs; conv weights keep their random init",
         size=10, color="#3b4456", linespacing=1.45)

    # Legend.
    ly = 8.2
    box(ax, x0 + 3.0, ly - 1.6, 5.0, 3.2, GREY, GREY_EDGE)
    lock(ax, x0 + 5.5, ly, s=1.3)
    text(ax, x0 + 9.0, ly, "conv weights: frozen", size=10, ha="left")
    box(ax, x0 + 25.5, ly - 1.6, 5.0, 3.2, ORANGE, ORANGE_EDGE)
    text(ax, x0 + 31.5, ly, "trainable BN (γ, β)", size=10, ha="left")
    arrow(ax, (x0 + 47.0, ly), (x0 + 51.5, ly), color=BLUE, lw=2.2)
    text(ax, x0 + 52.5, ly, "sampled path", size=10, ha="left")


# ---------------------------------------------------------------- stage 2

def draw_search(ax, x0, x1):
    panel(ax, x0, x1, 2, "BN-indicator search", "seconds on a CPU, no data")
    cx = (x0 + x1) / 2
    # Score definition.
    box(ax, x0 + 2.5, 40.0, x1 - x0 - 5.0, 8.6, "white", PANEL_EDGE, lw=1.2, rounding=0.8)
    text(ax, cx, 45.6, r"$\mathrm{score}(a)=\sum_{l=1}^{L}\ \mathrm{mean}_c\,|\gamma_{c}^{\,(l,\,a_l)}|$",
         size=14)
    text(ax, cx, 41.7, "γ of the last BN in the op chosen at layer $l$", size=9.5, color="#3b4456")

    # Evolutionary loop: four steps around a cycle.
    ccx, ccy = cx, 25.5
    steps = [  # (label, centre, colour)
        ("population", (ccx, ccy + 8.5), ("white", INK)),
        ("mutation /\ncrossover", (ccx + 13.5, ccy), ("white", INK)),
        ("FLOPs filter", (ccx, ccy - 8.5), ("white", INK)),
        ("BN score", (ccx - 13.5, ccy), (ORANGE, ORANGE_EDGE)),
    ]
    bw, bh = 14.0, 5.2
    for label, (bx, by), (fill, edge) in steps:
        box(ax, bx - bw / 2, by - bh / 2, bw, bh, fill, edge, lw=1.3, rounding=0.8)
        text(ax, bx, by, label, size=10.5, linespacing=1.1)
    # Clockwise arrows between box edges.
    top, right, bottom, left = (c for _, c, _ in steps)
    arrow(ax, (top[0] + bw / 2, top[1]), (right[0], right[1] + bh / 2), rad=-0.35)
    arrow(ax, (right[0], right[1] - bh / 2), (bottom[0] + bw / 2, bottom[1]), rad=-0.35)
    arrow(ax, (bottom[0] - bw / 2, bottom[1]), (left[0], left[1] - bh / 2), rad=-0.35)
    arrow(ax, (left[0], left[1] + bh / 2), (top[0] - bw / 2, top[1]), rad=-0.35)
    text(ax, ccx, ccy + 0.9, "evolution", size=10.5, weight="bold", color="#3b4456")
    text(ax, ccx, ccy - 1.3, "keep top-k", size=9.5, color="#3b4456")

    # Knapsack note.
    box(ax, x0 + 2.5, 4.0, x1 - x0 - 5.0, 7.0, NOTE_FILL, NOTE_EDGE, lw=1.2, rounding=0.8)
    text(ax, cx, 7.5, "additive score ⇒ exact knapsack optimum (DP)\n"
         "under the FLOPs budget, as a cross-check", size=9.8, linespacing=1.35)


# ---------------------------------------------------------------- stage 3

def draw_retrain(ax, x0, x1):
    panel(ax, x0, x1, 3, "Retrain", "best subnet, from scratch")
    cx = (x0 + x1) / 2
    ys = (44.0, 37.0, 30.0, 23.0, 16.0)
    labels = ("x", OPS[PATH[0]], OPS[PATH[1]], OPS[PATH[2]], "head → ŷ")
    for i, (y, label) in enumerate(zip(ys, labels)):
        io_node = i in (0, len(ys) - 1)
        w = 6.0 if i == 0 else 15.0
        fill, edge = ("white", INK) if io_node else (GREEN, GREEN_EDGE)
        box(ax, cx - w / 2, y - 2.4, w, 4.8, fill, edge, lw=1.4, rounding=0.7)
        text(ax, cx, y, label, size=10.5, style="italic" if i == 0 else "normal")
        if i:
            arrow(ax, (cx, ys[i - 1] - 2.4), (cx, y + 2.4), lw=1.5)
    text(ax, cx, 8.0, "all weights re-initialised\nand trained (full schedule),\nthen val accuracy",
         size=10, color="#3b4456", linespacing=1.35)


def draw(out: Path) -> Path:
    fig = plt.figure(figsize=(WIDTH / 10, HEIGHT / 10), dpi=DPI, facecolor="white")
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, HEIGHT)
    ax.set_aspect("equal")
    ax.axis("off")

    spans = ((1.0, 66.0), (71.5, 117.5), (123.0, 147.0))
    draw_supernet(ax, *spans[0])
    draw_search(ax, *spans[1])
    draw_retrain(ax, *spans[2])

    # Hand-offs between stages.
    for (a0, a1), (b0, b1), label, size in ((spans[0], spans[1], "BN γ", 9.5),
                                            (spans[1], spans[2], "$a^*$", 13)):
        arrow(ax, (a1 + 0.4, 30.0), (b0 - 0.4, 30.0), lw=2.5, mut=18, z=8)
        text(ax, (a1 + b0) / 2, 32.8, label, size=size, weight="bold")

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Draw the BN-NAS framework figure.")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "framework.png",
                   help="output PNG (default: framework.png at the repo root)")
    args = p.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        print(f"draw_framework: error: --out must end in .png, got {args.out}", file=sys.stderr)
        return 2
    try:
        path = draw(args.out)
    except OSError as exc:
        print(f"draw_framework: error: {exc}", file=sys.stderr)
        return 1
    print(f"draw_framework: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
