"""Benchmark: training data-loader throughput per worker process, on full-size JPEG photos.

This project's loader (`utils.data.loaders.build_train_loader`: uint8 crops from the workers,
float conversion + normalisation in `prepare`, reduced JPEG decoding where the crop
allows it) against the plain torchvision recipe (ImageFolder + PIL decode,
RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize in the worker), with
the same DataLoader settings. Each pipeline runs one epoch per round over the same photo
set, with 1 worker (its rate is one worker's) and in-process (workers=0); the pipelines
alternate within every round (order flipped each round), so load from other jobs on a
shared CPU hits both alike, and the medians over rounds are reported: images per second
of wall-clock time, and per CPU-second of the worker process itself (Linux /proc; the
process's own time when in-process), which other jobs on the machine do not disturb.
On a CPU-only machine `prepare` runs on the CPU too, in the main process: it is part of
the in-process figures and of the wall-clock contention, not of a worker's CPU time.

The photo set (written once into a cache folder, not the repo): scikit-image's sample
photographs when scikit-image is installed, else matplotlib's sample photograph, else
synthetic JPEGs (labelled so), cut and re-encoded (quality 90) at ImageNet-like sizes
(long side --long-side, default 500: 500x375, 500x333, 375x500, ...).

    python3 bench/data_loader.py                  # table
    python3 bench/data_loader.py --json           # one JSON object
    python3 bench/data_loader.py --long-side 1000 # larger photos: reduced decoding helps more
    python3 bench/data_loader.py --quick --json   # smoke run: a handful of small JPEGs
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time


import numpy as np
import torch
from PIL import Image, features

from utils.cli.common import UserError, main_guard
from utils.data.folder import scan_image_folder
from utils.data.loaders import build_train_loader
from utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.dist import DistEnv

# scikit-image's colour photographs (its other samples are greyscale or drawings).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
                  "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg",
                  "rocket.jpg")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
# (width, height) at long side 500: the common shapes of ImageNet training photos.
SHAPES_500 = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (500, 500))
JPEG_QUALITY = 90
SET_VERSION = 1  # bump when the photo set recipe changes, so caches are rebuilt
GOAL_RATIO = 1.5


# ---- the photo set -------------------------------------------------------------------

def _package_dir(name: str) -> str | None:
    """A package's folder without importing it (scikit-image's import is slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def photo_sources(source: str, photos_dir: str | None) -> tuple[str, list[str]]:
    """(label, source image paths); an empty list means synthetic images."""
    if photos_dir:
        if not os.path.isdir(photos_dir):
            raise UserError(f"--photos {photos_dir} is not a directory")
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(photos_dir)
                       for f in files if f.lower().endswith((".jpg", ".jpeg", ".png")))
        if not paths:
            raise UserError(f"--photos {photos_dir} holds no .jpg/.jpeg/.png images")
        return f"photographs from {photos_dir}", paths
    found: dict[str, list[str]] = {}
    sk = _package_dir("skimage")
    if sk:
        found["skimage"] = [os.path.join(sk, "data", n) for n in SKIMAGE_PHOTOS
                            if os.path.isfile(os.path.join(sk, "data", n))]
    mpl = _package_dir("matplotlib")
    if mpl:
        found["matplotlib"] = [os.path.join(mpl, "mpl-data", "sample_data", n)
                               for n in MATPLOTLIB_PHOTOS
                               if os.path.isfile(os.path.join(mpl, "mpl-data", "sample_data", n))]
    labels = {"skimage": "scikit-image sample photographs",
              "matplotlib": "matplotlib sample photograph"}
    if source == "auto":
        for name in ("skimage", "matplotlib"):
            if found.get(name):
                source = name
                break
        else:
            source = "synthetic"
    if source == "synthetic":
        return "synthetic JPEGs (not photographs)", []
    if not found.get(source):
        raise UserError(f"--source {source}: its sample photographs are not installed")
    return f"{labels[source]} ({', '.join(os.path.basename(p) for p in found[source])})", \
        found[source]


def _synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like test image: smooth colour fields, some hard-edged shapes and sensor-like
    noise, so its JPEG has a photo's entropy (decode cost depends on it)."""
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    arr = np.asarray(img).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(10, min(width, height) / 3)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        arr[mask] = arr[mask] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    arr += rng.normal(0, 8, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _shapes(long_side: int) -> list[tuple[int, int]]:
    return [(max(8, round(w * long_side / 500)), max(8, round(h * long_side / 500)))
            for w, h in SHAPES_500]


def make_photo_set(out: str, sources: list[str], count: int, classes: int, long_side: int,
                   seed: int = 0) -> None:
    """`count` JPEGs in an ImageFolder tree under `out`/<class>/: random crops (60-100% of
    the largest at the target aspect, random position and mirror) of the source photos,
    resized with a Lanczos filter to ImageNet-like shapes and encoded at quality 90."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sources]
    shapes = _shapes(long_side)
    for i in range(count):
        width, height = shapes[i % len(shapes)]
        if photos:
            src = photos[i % len(photos)]
            aspect = width / height
            cw = min(src.width, src.height * aspect) * rng.uniform(0.6, 1.0)
            ch = cw / aspect
            left = rng.uniform(0, src.width - cw)
            top = rng.uniform(0, src.height - ch)
            img = src.resize((width, height), Image.LANCZOS, box=(left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            img = _synthetic_photo(rng, width, height)
        folder = os.path.join(out, f"class_{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        img.save(os.path.join(folder, f"{i:05d}.jpg"), quality=JPEG_QUALITY)


def photo_set(cache_dir: str, label: str, sources: list[str], count: int, classes: int,
              long_side: int) -> str:
    """The cached photo set for these settings, made (atomically) if missing."""
    key = json.dumps([SET_VERSION, label, [(os.path.basename(p), os.path.getsize(p))
                                           for p in sources], count, classes, long_side])
    name = hashlib.sha1(key.encode()).hexdigest()[:12]
    root = os.path.join(cache_dir, name)
    if not os.path.isfile(os.path.join(root, "DONE")):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
        try:
            make_photo_set(os.path.join(tmp, "train"), sources, count, classes, long_side)
            with open(os.path.join(tmp, "DONE"), "w") as f:
                f.write(label + "\n")
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(root, "train")


def describe_set(root: str) -> dict:
    paths = [p for p, _ in scan_image_folder(root, "photo set").samples]
    sizes = [Image.open(p).size for p in paths]
    return dict(count=len(paths), dir=root,
                mean_width=round(float(np.mean([s[0] for s in sizes])), 1),
                mean_height=round(float(np.mean([s[1] for s in sizes])), 1),
                mean_kbytes=round(float(np.mean([os.path.getsize(p) for p in paths])) / 1024, 1))


# ---- the two pipelines -----------------------------------------------------------------

class ProjectPipeline:
    """utils.data.loaders.build_train_loader + prepare (device-side normalisation; CPU here)."""

    name = "project"

    def __init__(self, root: str, input_size: int, batch: int, workers: int, seed: int,
                 reduced_decode: bool = True):
        self.loader = build_train_loader(root, input_size, batch, DistEnv(), workers, seed,
                                         reduced_decode=reduced_decode)
        self.device = torch.device("cpu")
        self.epoch = 0

    def batches(self):
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        for batch in self.loader:
            x, _ = self.loader.prepare(batch, self.device)
            yield x

    def worker_pids(self) -> list[int]:
        return _worker_pids(self.loader.loader)

    def close(self) -> None:
        self.loader.close()


class TorchvisionPipeline:
    """The plain recipe: every transform, ToTensor and Normalize included, in the worker."""

    name = "torchvision"

    def __init__(self, root: str, input_size: int, batch: int, workers: int, seed: int):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms
        tf = transforms.Compose([transforms.RandomResizedCrop(input_size),
                                 transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        # Same DataLoader settings as build_train_loader, so only the per-image work differs.
        self.loader = DataLoader(datasets.ImageFolder(root, transform=tf), batch_size=batch,
                                 shuffle=True, drop_last=True, num_workers=workers,
                                 persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers > 0 else None,
                                 generator=torch.Generator().manual_seed(seed))

    def batches(self):
        for x, _ in self.loader:
            yield x

    def worker_pids(self) -> list[int]:
        return _worker_pids(self.loader)

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()
            self.loader._iterator = None


def _worker_pids(loader) -> list[int]:
    """The persistent worker processes of a DataLoader (none before its first epoch)."""
    it = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(it, "_workers", [])]


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of processes (Linux /proc; None elsewhere)."""
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def time_epoch(pipe, workers: int, batch: int, input_size: int) -> tuple[float, float | None, int]:
    """(images/s of wall-clock time, images/s of CPU time, images) over one epoch.

    Wall clock: with workers, from the first batch's arrival, so worker start-up and the
    pipeline's fill are left out. CPU time: the workers' own (so other jobs on a shared
    CPU, and the main process's work, do not count), or this process's when in-process.
    """
    want = (batch, 3, input_size, input_size)
    pids = pipe.worker_pids() if workers > 0 else []
    cpu0 = _cpu_seconds(pids) if pids else (time.process_time() if workers == 0 else None)
    stamps = [time.perf_counter()]
    for x in pipe.batches():
        if tuple(x.shape) != want or x.dtype != torch.float32:
            raise RuntimeError(f"{pipe.name} gave a {x.dtype} batch of shape "
                               f"{tuple(x.shape)}, expected float32 {want}")
        stamps.append(time.perf_counter())
    cpu1 = _cpu_seconds(pids) if pids else (time.process_time() if workers == 0 else None)
    n = (len(stamps) - 1) * batch
    if workers > 0 and len(stamps) > 2:
        wall = (n - batch) / (stamps[-1] - stamps[1])
    else:
        wall = n / (stamps[-1] - stamps[0])
    cpu = n / (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None and cpu1 > cpu0 else None
    return wall, cpu, n


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run(args) -> dict:
    torch.set_num_threads(1)  # in-process rates are per process, like a worker's
    if args.quick:
        args.images, args.classes, args.long_side = 16, 4, 96
        args.input_size, args.batch_size, args.rounds = 32, 4, 1
    label, sources = photo_sources(args.source, args.photos)
    root = photo_set(args.cache_dir, label, sources, args.images, args.classes, args.long_side)
    photos = dict(source=label, **describe_set(root))
    if photos["count"] < args.batch_size:
        raise UserError(f"{photos['count']} photos, fewer than one batch ({args.batch_size})")
    makers = {"project": lambda w: ProjectPipeline(root, args.input_size, args.batch_size, w,
                                                   args.seed),
              "torchvision": lambda w: TorchvisionPipeline(root, args.input_size,
                                                           args.batch_size, w, args.seed)}
    if args.ablation:
        makers["project_full_decode"] = lambda w: ProjectPipeline(
            root, args.input_size, args.batch_size, w, args.seed, reduced_decode=False)
    results = []
    t0 = time.perf_counter()
    for workers in args.workers:
        pipes = {name: make(workers) for name, make in makers.items()}
        try:
            for pipe in pipes.values():  # warm-up: worker start-up, page cache, lazy imports
                time_epoch(pipe, workers, args.batch_size, args.input_size)
            rates: dict[str, list[float]] = {name: [] for name in pipes}
            cpu_rates: dict[str, list[float | None]] = {name: [] for name in pipes}
            images = {name: 0 for name in pipes}
            for r in range(args.rounds):
                order = list(pipes) if r % 2 == 0 else list(reversed(pipes))
                for name in order:
                    wall, cpu, n = time_epoch(pipes[name], workers, args.batch_size,
                                              args.input_size)
                    rates[name].append(wall / max(1, workers))
                    cpu_rates[name].append(cpu)  # already per CPU-second of one process
                    images[name] += n
        finally:
            for pipe in pipes.values():
                pipe.close()
        row = dict(workers=workers, images=images,
                   batch_shape=[args.batch_size, 3, args.input_size, args.input_size],
                   **{f"{name}_img_s": _median(v) for name, v in rates.items()},
                   **{f"{name}_cpu_img_s": _median(v) for name, v in cpu_rates.items()},
                   rounds={name: [round(v, 1) for v in vs] for name, vs in rates.items()},
                   cpu_rounds={name: [None if v is None else round(v, 1) for v in vs]
                               for name, vs in cpu_rates.items()})
        row["ratio"] = _ratio(row["project_img_s"], row["torchvision_img_s"])
        row["paired_ratio"] = round(statistics.median(
            p / t for p, t in zip(rates["project"], rates["torchvision"])), 3)
        row["cpu_ratio"] = _ratio(row["project_cpu_img_s"], row["torchvision_cpu_img_s"])
        results.append(row)
    return dict(
        bench="data_loader",
        unit="images per second per worker process (workers=0: in-process); *_img_s: "
             "of wall-clock time, *_cpu_img_s: of the process's own CPU time",
        photos=photos,
        config=dict(input_size=args.input_size, batch_size=args.batch_size,
                    rounds=args.rounds, images_per_epoch=(photos["count"] // args.batch_size)
                    * args.batch_size, seed=args.seed, quick=args.quick),
        machine=dict(cpus=os.cpu_count(), platform=platform.platform(),
                     python=platform.python_version(), torch=torch.__version__,
                     pillow=Image.__version__,
                     libjpeg_turbo=bool(features.check_feature("libjpeg_turbo")),
                     torch_cpu_capability=torch.backends.cpu.get_cpu_capability()),
        results=results, goal_ratio=GOAL_RATIO,
        meets_goal=all(r["ratio"] >= GOAL_RATIO for r in results),
        meets_goal_cpu=all((r["cpu_ratio"] or 0) >= GOAL_RATIO for r in results),
        seconds=round(time.perf_counter() - t0, 1))


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(out: dict) -> None:
    p, c, m = out["photos"], out["config"], out["machine"]
    print(f"data loader, images/s per worker process (workers=0: in-process), medians of "
          f"{c['rounds']} interleaved rounds")
    print(f"photos: {p['count']} JPEGs, mean {p['mean_width']:.0f}x{p['mean_height']:.0f}, "
          f"{p['mean_kbytes']:.0f} KB, from {p['source']}")
    print(f"input {c['input_size']}, batch {c['batch_size']}; {m['cpus']} CPUs, "
          f"torch {m['torch']}, Pillow {m['pillow']} (libjpeg-turbo: {m['libjpeg_turbo']})")
    extra = [k[:-len("_img_s")] for k in out["results"][0] if k.endswith("_img_s")
             and not k.endswith("_cpu_img_s") and k not in ("project_img_s", "torchvision_img_s")]
    print(f"{'':>8} {'---------- wall clock ----------':>40}  {'--- per CPU-second ---':>33}")
    print(f"{'workers':>8} {'project':>9} {'torchvision':>12} {'ratio':>7} {'paired':>8}  "
          f"{'project':>9} {'torchvision':>12} {'ratio':>8}"
          + "".join(f"  {k + ' (wall, cpu)':>32}" for k in extra))
    for r in out["results"]:
        print(f"{r['workers']:>8} {r['project_img_s']:>9.1f} {r['torchvision_img_s']:>12.1f} "
              f"{r['ratio']:>6.2f}x {r['paired_ratio']:>7.2f}x  "
              f"{_fmt(r['project_cpu_img_s'], '9.1f'):>9} "
              f"{_fmt(r['torchvision_cpu_img_s'], '12.1f'):>12} "
              f"{_fmt(r['cpu_ratio'], '7.2f'):>7}x"
              + "".join(f"  {r[k + '_img_s']:>21.1f}, {_fmt(r[k + '_cpu_img_s'], '.1f'):>8}"
                        for k in extra))
    print(f"goal: project >= {out['goal_ratio']}x torchvision: wall clock "
          f"{'met' if out['meets_goal'] else 'NOT met'}, CPU time "
          f"{'met' if out['meets_goal_cpu'] else 'NOT met'} ({out['seconds']} s)")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bn-nas", "data_loader_bench")


@main_guard
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 16 small JPEGs, input 32, batch 4, one round")
    ap.add_argument("--source", choices=("auto", "skimage", "matplotlib", "synthetic"),
                    default="auto", help="photos to cut the set from (default: scikit-image's "
                    "if installed, else matplotlib's, else synthetic)")
    ap.add_argument("--photos", default=None,
                    help="use the images of this folder (e.g. an ImageNet slice) as sources")
    ap.add_argument("--images", type=int, default=256, help="photo set size (default 256)")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--long-side", type=int, default=500,
                    help="long side of the photos (default 500, as most of ImageNet)")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=9, help="timed epochs per pipeline and "
                    "worker count (default 9)")
    ap.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")],
                    default=[1, 0], help="comma-separated worker counts (default 1,0)")
    ap.add_argument("--ablation", action="store_true",
                    help="also time the project loader with reduced JPEG decoding off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=default_cache_dir(),
                    help="where the photo set is written (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.rounds < 1 or args.classes < 1:
        raise UserError("--images, --batch-size, --rounds and --classes must be >= 1")
    if any(w < 0 for w in args.workers):
        raise UserError("--workers must be >= 0")
    out = run(args)
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
