"""The whole BN-NAS pipeline on the bundled Fashion-MNIST slice, on a CPU, in minutes.

    python3 tools/run_demo.py [--out demo_out] [--quick]

Stages: write the ImageFolder data -> supernet (BN only, 2 processes under torchrun)
-> ea.py (EA + exact optimum) -> eval.py -> retrain the winner -> --eval on its best
checkpoint. Each stage is the user-facing script with its own progress bar; every stage
resumes, so a second run reuses what is there. Ends with a report and summary.json.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils.files import check_output_dir, write_json_atomic
from utils.cli.common import ArgumentParser, int_range, main_guard, seed_int

RETRAIN_EPOCHS, RETRAIN_LR = 6, 0.05  # the retrain recipe (see README, "The demo")

# The demo config: small inputs and width, so a 2-core CPU retrains a subnet to >82% in
# minutes. Validation keeps the whole 24x24 image (--val-crop-pct 1.0): Fashion-MNIST's
# items are centred and fill the frame, and ImageNet's 0.875 centre crop cut their edges
# (measured on the demo's architecture: 10 epochs 78.65% at 0.875, 86.0% at 1.0).
DEMO = dict(space="mobilenet", input_size=24, width_mult=0.5, stem_stride=1)
FULL = dict(train_per_class=600, val_per_class=200, supernet_epochs=3, supernet_batch=128,
            supernet_lr=0.25, retrain_epochs=RETRAIN_EPOCHS, retrain_batch=128,
            retrain_lr=RETRAIN_LR, min_scale=0.85, val_crop_pct=1.0)
# --quick: the end-to-end test's tiny settings (checks the hand-offs, not accuracy).
QUICK = dict(train_per_class=8, val_per_class=3, supernet_iters=3, supernet_batch=16,
             supernet_lr=0.25, retrain_iters=3, retrain_batch=16, retrain_lr=0.05,
             min_scale=0.85, val_crop_pct=1.0)


# Printed at the end of the report: the same pipeline on the user's data, then ImageNet.
NEXT_STEPS = """
=== Go further
Your own ImageFolder (D/train/<class>/*.jpg, D/val/<class>/*.jpg), on this machine's CPUs
(add --amp bf16 and one process per GPU on GPUs):
  D=/path/to/your/imagefolder; R=runs/mine
  torchrun --nproc_per_node=2 supernet/main.py --train_dir $D/train --input-size 64 --epochs 10 --checkpoint $R/supernet/checkpoint.pth.tar
  python3 search/ea.py --checkpoint $R/supernet/checkpoint.pth.tar --log-dir $R/search
  python3 search/eval.py --log-dir $R/search --topk 5 --plot
  torchrun --nproc_per_node=2 retrain/train_from_scratch.py --arch-from $R/search --train_dir $D/train --test_dir $D/val --epochs 30 --save mine
  python3 retrain/export.py --checkpoint eval-mine/best.pth.tar --out $R/export
  (the class count comes from the data; rerun any line to resume it)
ImageNet on 8 GPUs (README, "Quick start on ImageNet"):
  python3 tools/make_holdout_split.py --train_dir /data/imagenet/train --out /data/imagenet_split --total 50000
  torchrun --nproc_per_node=8 supernet/main.py --train_dir /data/imagenet_split/train --checkpoint supernet/checkpoint.pth.tar --amp bf16
  python3 search/ea.py --checkpoint supernet/checkpoint.pth.tar --log-dir search/log --flops-limit 475
  torchrun --nproc_per_node=8 retrain/train_from_scratch.py --train_dir /data/imagenet/train --test_dir /data/imagenet/val --arch-from search/log --amp bf16
  python3 retrain/export.py --checkpoint eval-retrain/best.pth.tar --out exported/"""


def space_flags() -> list[str]:
    return ["--space", DEMO["space"], "--input-size", str(DEMO["input_size"]),
            "--width-mult", str(DEMO["width_mult"]), "--stem-stride", str(DEMO["stem_stride"])]


def run(title: str, cmd: list[str], cwd: str, env: dict, times: dict, key: str) -> str:
    """Run one stage, streaming its output (progress bars included) and keeping a copy."""
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    proc.wait()
    times[key] = times.get(key, 0.0) + time.perf_counter() - start
    if proc.returncode != 0:
        print(f"error: stage '{title}' failed with exit code {proc.returncode}", file=sys.stderr)
        sys.exit(proc.returncode)
    return "".join(lines)


def _environment(env: dict) -> dict:
    """The stages' CPU kernels and threads: results are bit-identical only where these
    (and the PyTorch build) agree."""
    import torch
    return dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                threads_per_process=int(env.get("OMP_NUM_THREADS", "1")),
                onednn_max_isa=env.get("ONEDNN_MAX_CPU_ISA", "default"))


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "demo_out"), help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny settings (the end-to-end test)")
    p.add_argument("--nproc", type=int_range(1, 64), default=2,
                   help="processes for stages 1 and 3 (torchrun), 1..64")
    p.add_argument("--seed", type=seed_int, default=0, help="0 <= seed < 2**32")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    check_output_dir(args.out, "--out")  # before any work: a file or unwritable place fails now
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    py = sys.executable
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 processes on 2 cores: one thread each
    times: dict[str, float] = {}
    data = os.path.join(out, "data")
    ckpt = os.path.join(out, "supernet", "checkpoint.pth.tar")
    log_dir = os.path.join(out, "search")
    t0 = time.perf_counter()

    run("Data: Fashion-MNIST slice -> ImageFolder",
        [py, os.path.join(ROOT, "tools", "demo_data.py"), "--out", data,
         "--size", str(DEMO["input_size"]), "--train-per-class", str(s["train_per_class"]),
         "--val-per-class", str(s["val_per_class"])], out, env, times, "data")

    length = (["--total_iters", str(s["supernet_iters"])] if "supernet_iters" in s
              else ["--epochs", str(s["supernet_epochs"])])
    run(f"Stage 1: BN-only supernet training ({args.nproc} CPU processes, torchrun)",
        [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
         os.path.join(ROOT, "supernet", "main.py"), "--train_dir", os.path.join(data, "train"),
         *space_flags(), "--batch_size", str(s["supernet_batch"]), "--learning_rate",
         str(s["supernet_lr"]), *length, "--workers", "1", "--seed", str(args.seed),
         "--report_freq", "10", "--min-scale", str(s["min_scale"]), "--lighting", "0", "--checkpoint", ckpt],
        out, env, times, "supernet")

    run("Stage 2: BN-indicator search (EA + exact optimum)",
        [py, os.path.join(ROOT, "search", "ea.py"), "--checkpoint", ckpt, "--log-dir", log_dir,
         "--seed", str(args.seed)], out, env, times, "search")
    run("Stage 2: search log", [py, os.path.join(ROOT, "search", "eval.py"),
                                "--log-dir", log_dir, "--topk", "5", "--plot"],
        out, env, times, "search")

    length = (["--total_iters", str(s["retrain_iters"])] if "retrain_iters" in s
              else ["--epochs", str(s["retrain_epochs"])])
    retrain = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               os.path.join(ROOT, "retrain", "train_from_scratch.py"),
               "--arch-from", log_dir, "--train_dir", os.path.join(data, "train"),
               "--test_dir", os.path.join(data, "val"), "--batch_size", str(s["retrain_batch"]),
               "--learning_rate", str(s["retrain_lr"]), *length, "--workers", "1",
               "--seed", str(args.seed), "--report_freq", "20", "--min-scale", str(s["min_scale"]),
               "--lighting", "0", "--dropout", "0", "--val-crop-pct", str(s["val_crop_pct"]),
               "--save", "demo"]
    run(f"Stage 3: retrain the winner from scratch ({args.nproc} CPU processes, DDP)", retrain, out, env, times, "retrain")
    best = os.path.join(out, "eval-demo", "best.pth.tar")
    text = run("Stage 3: evaluate the best checkpoint",
               [py, os.path.join(ROOT, "retrain", "train_from_scratch.py"), "--eval",
                "--eval-resume", best, "--test_dir", os.path.join(data, "val"),
                "--val-crop-pct", str(s["val_crop_pct"]), "--workers", "1"], out, env, times,
               "eval")
    top1 = float(re.search(r"valid_acc_top1\s+([0-9.]+)", text).group(1))
    top5 = float(re.search(r"valid_acc_top5\s+([0-9.]+)", text).group(1))

    with open(os.path.join(log_dir, "ea_results.json")) as f:
        log = json.load(f)
    from utils.search.log import load_log, ranked
    chosen = ranked(load_log(log_dir))[0]  # what --arch-from retrained
    ea, exact = log["best"], log.get("exact") or {}
    summary = dict(
        config=log.get("config"), arch=" ".join(map(str, chosen["arch"])),
        flops=int(chosen["flops"]), params=int(chosen["params"]), score=chosen["score"],
        flops_limit=log.get("flops_limit"),
        ea_best=dict(arch=ea["arch"], score=ea["score"], flops=ea["flops"]),
        exact=dict(arch=exact.get("arch"), score=exact.get("score"), flops=exact.get("flops")),
        gap=(exact["score"] - ea["score"]) if exact.get("score") is not None else None,
        retrained_top1=top1, retrained_top5=top5,
        seconds={k: round(v, 1) for k, v in times.items()},
        total_seconds=round(time.perf_counter() - t0, 1), quick=args.quick,
        # what decides the floating-point results (tools/determinism_check.py)
        environment=_environment(env))
    write_json_atomic(summary, os.path.join(out, "summary.json"))

    print("\n=== BN-NAS demo report")
    print(f"architecture   {summary['arch']}  (retrained: the search log's first)")
    print(f"FLOPs, params  {summary['flops'] / 1e6:.2f}M, {summary['params'] / 1e6:.3f}M "
          f"(FLOPs limit {summary['flops_limit'] / 1e6:.2f}M)")
    print(f"EA best        score {ea['score']:.4f}  {' '.join(map(str, ea['arch']))}")
    if exact.get("score") is not None:
        print(f"exact optimum  score {exact['score']:.4f}  {' '.join(map(str, exact['arch']))}"
              f"  (EA gap {summary['gap']:.4f})")
    print(f"retrained      top-1 {top1:.2f}%  top-5 {top5:.2f}% on {data}/val")
    print("time           " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items())
          + f"; total {summary['total_seconds']:.0f}s")
    print(f"summary        {os.path.join(out, 'summary.json')}")
    print(NEXT_STEPS)


if __name__ == "__main__":
    main()
