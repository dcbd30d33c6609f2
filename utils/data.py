"""ImageFolder loaders shared by supernet training, retraining and SPOS scoring.

Design:
* Workers decode and crop, and hand over **uint8** CHW tensors (4x less to pin and copy
  than float); conversion to float, PCA lighting, normalisation and the optional
  channels_last layout happen on the device in `prepare_batch`.
* Training augmentation (SPEC.md section 5): random resized crop (area 0.08-1, aspect
  3/4-4/3 as torchvision), horizontal flip, PCA lighting noise (std 0.1). Its randomness
  depends only on (seed, epoch, sample index): every sample gets its own torch.Generator,
  so a run resumed mid-epoch sees exactly the images an uninterrupted run would, whatever
  the worker count. Lighting is a per-image RGB offset, so the worker only draws it and
  the device adds it.
* Sharding without padding: `GlobalBatchSampler` cuts each epoch's permutation into
  global batches and hands rank r the r-th slice of each, so no two ranks see the same
  sample and every rank runs the same number of steps; the incomplete last global batch
  is dropped. `ShardSampler` (validation) gives rank r the indices r, r+W, r+2W, ...: the
  shards are disjoint and cover the set exactly, so summed counts over ranks are exact.
* A corrupt or unreadable image raises `BadImageError` (a `UserError`: one-line message
  naming the file), also when it happens inside a DataLoader worker.

Public API (stable; add, don't break):

    INPUT_FORMATS = ("rgb", "bgr255"); DEFAULT_INPUT_FORMAT = "rgb"
    IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC
    val_resize_size(input_size) -> int           # round(input / 0.875)
    scan_image_folder(root, what="--train_dir") -> FolderIndex (.classes, .class_to_idx,
        .samples): torchvision ImageFolder's indexing without importing torchvision
    build_train_loader(root, input_size, batch_size, env, workers, seed, *,
                       input_format="rgb", classes=None, min_scale=0.08,
                       lighting_std=0.1, persistent=True, crop_ratio=(3/4, 4/3))
        -> TrainLoader   (workers=None: default_workers(); crop_ratio=(1, 1): square crops)
        TrainLoader: set_epoch(epoch, start_step=0); iter -> (uint8 [b,3,H,W],
        int64 labels [b], float lighting [b,3]); len = steps left in the epoch;
        .steps_per_epoch, .batch_size (global), .batch_size_per_rank, .num_classes,
        .dataset, .input_format, .prepare(batch, device, channels_last=False),
        .sampler.batch_indices(epoch, step) (the indices this rank trains on)
    build_val_loader(root, input_size, batch_size_per_rank, env, workers,
                     input_format="rgb") -> ValLoader
        ValLoader: iter -> (uint8 images, int64 labels); .num_samples (whole set),
        .num_classes, .dataset, .input_format, .prepare(batch, device, channels_last)
    prepare_batch(batch, device, input_format="rgb", channels_last=False)
        -> (float32 images on device, labels on device)
    GlobalBatchSampler, ShardSampler, SeededImageFolder, BadImageError
    add_data_args(parser)      # --workers (default None = default_workers()), --input-format
    default_workers() -> int   # CPUs available per local process, at most 8
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.cli import UserError

INPUT_FORMATS = ("rgb", "bgr255")
# rgb: ImageNet mean/std normalised RGB (torchvision convention, the default);
# bgr255: the reference's BGR channels in 0-255 without normalisation.
DEFAULT_INPUT_FORMAT = "rgb"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PCA lighting (AlexNet-style) on RGB in [0, 1]: SPEC.md section 5.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5836, -0.6948, 0.4203),
              (-0.5808, -0.0045, -0.8140),
              (-0.5675, 0.7192, 0.4009))
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
VAL_CROP_FRACTION = 0.875
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageError(UserError):
    """An image that cannot be decoded; the message names the file."""


def val_resize_size(input_size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, as the ImageNet convention."""
    return int(round(input_size / VAL_CROP_FRACTION))


def default_workers(cap: int = 8) -> int:
    """Loader workers per process: the CPUs this process may use, shared per node, <= cap."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(cap, cpus // max(1, local_world)))


def add_data_args(parser: argparse.ArgumentParser, workers_default: int | None = None) -> None:
    """--workers (None = `default_workers()`, resolved by the loader builders) and --input-format."""
    parser.add_argument("--workers", type=int, default=workers_default,
                        help="data loader worker processes per process (default: the CPUs "
                             "available to it, at most 8)")
    parser.add_argument("--input-format", "--input_format", default=DEFAULT_INPUT_FORMAT,
                        choices=INPUT_FORMATS, dest="input_format",
                        help="network input convention: rgb = ImageNet mean/std normalised "
                             "RGB (default); bgr255 = the reference's BGR 0-255")


def add_augment_args(parser: argparse.ArgumentParser) -> None:
    """Training augmentation knobs; the defaults are SPEC.md's ImageNet recipe."""
    g = parser.add_argument_group("augmentation")
    g.add_argument("--min-scale", "--min_scale", dest="min_scale", type=float, default=0.08,
                   help="smallest crop area fraction of the random resized crop (default: "
                        "0.08; small, already-centred images such as the demo's want ~0.35)")
    g.add_argument("--lighting", type=float, default=0.1,
                   help="std of the PCA lighting noise, 0 disables it (default: 0.1)")
    g.add_argument("--square-crop", "--square_crop", dest="square_crop", action="store_true",
                   help="crop at aspect 1 as the reference did (default: 3/4-4/3)")


def augment_kwargs(args: argparse.Namespace) -> dict:
    """build_train_loader keyword arguments from add_augment_args' flags."""
    if not 0 < args.min_scale <= 1:
        raise UserError(f"--min-scale must be in (0, 1], got {args.min_scale}")
    if args.lighting < 0:
        raise UserError(f"--lighting must be >= 0, got {args.lighting}")
    return dict(min_scale=args.min_scale, lighting_std=args.lighting,
                crop_ratio=(1.0, 1.0) if args.square_crop else CROP_RATIO)


# ---- the dataset --------------------------------------------------------------------

def _sample_seed(seed: int, epoch: int, index: int) -> int:
    # SeedSequence mixes the three integers well; 63 bits fit manual_seed.
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _open_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise BadImageError(f"cannot read image {path}: not an image or corrupt") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadImageError(f"cannot read image {path}: {reason}") from None


def random_resized_crop_params(width: int, height: int, gen: torch.Generator,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with area fraction in `scale` and aspect in `ratio`.

    The usual recipe (Szegedy et al. 2015): 10 tries at a random area and log-uniform
    aspect, then fall back to the whole image's central crop at the clamped aspect.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class SeededImageFolder(Dataset):
    """ImageFolder samples, transformed with per-sample seeded randomness.

    Training items are addressed by (index, epoch) tuples, which `GlobalBatchSampler`
    yields; plain integer indices (epoch 0) also work. Validation mode is deterministic.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], input_size: int, train: bool,
                 seed: int = 0, min_scale: float = 0.08, lighting_std: float = 0.1,
                 crop_ratio: tuple[float, float] = CROP_RATIO):
        self.samples = list(samples)
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.input_size = int(input_size)
        self.train = train
        self.seed = int(seed)
        self.min_scale = float(min_scale)
        self.lighting_std = float(lighting_std)
        self._eigval = torch.tensor(PCA_EIGVAL, dtype=torch.float64)
        self._eigvec = torch.tensor(PCA_EIGVEC, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (int(item), 0)
        path, label = self.samples[index]
        img = _open_rgb(path)
        if not self.train:
            return self._val(img), label
        gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, index))
        x, lighting = self._train(img, gen)
        return x, label, lighting

    def _resize(self, img: Image.Image, size: tuple[int, int]) -> Image.Image:
        return img.resize(size, Image.BILINEAR, reducing_gap=None)

    def _train(self, img: Image.Image, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, h, w = random_resized_crop_params(img.width, img.height, gen,
                                                     (self.min_scale, 1.0), self.crop_ratio)
        s = self.input_size
        img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
        x = _to_uint8_chw(img)
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(-1)
        # PCA lighting: one RGB offset per image (in [0, 1] units), added on the device.
        alpha = torch.randn(3, generator=gen, dtype=torch.float64) * self.lighting_std
        offset = (self._eigvec @ (alpha * self._eigval)).float()
        return x, offset

    def _val(self, img: Image.Image) -> torch.Tensor:
        short = val_resize_size(self.input_size)
        w, h = img.size
        if w <= h:
            nw, nh = short, int(round(h * short / w))
        else:
            nw, nh = int(round(w * short / h)), short
        img = img.resize((nw, nh), Image.BILINEAR)
        s = self.input_size
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
        return _to_uint8_chw(img.crop((left, top, left + s, top + s)))


class FolderIndex:
    """The ImageFolder index of a directory: `classes`, `class_to_idx`, `samples`."""

    def __init__(self, root: str, classes: list[str], samples: list[tuple[str, int]]):
        self.root, self.classes, self.samples = root, classes, samples
        self.class_to_idx = {c: i for i, c in enumerate(classes)}


def scan_image_folder(root: str | None, what: str = "--train_dir") -> FolderIndex:
    """Index `root`/<class>/**/<image> exactly as torchvision.datasets.ImageFolder does.

    Same class order (sorted folder names), same sample order (sorted walk) and the same
    image extensions, so labels agree with torchvision; dot-files (e.g. macOS `._x.jpg`)
    are skipped. Written here rather than imported because `import torchvision` pulls
    in torch._dynamo, which adds seconds to the start of every rank. A bad directory is
    a one-line UserError.
    """
    if not root:
        raise UserError(f"{what} is required (an ImageFolder directory: <root>/<class>/<image>)")
    if not os.path.exists(root):
        raise UserError(f"{what} {root} does not exist")
    if not os.path.isdir(root):
        raise UserError(f"{what} {root} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UserError(f"{what} {root} has no class folders (ImageFolder layout: "
                        f"<root>/<class>/<image>)")
    samples, empty = [], []
    for label, name in enumerate(classes):
        found = 0
        for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for fname in sorted(files):
                if _is_image(fname):
                    samples.append((os.path.join(folder, fname), label))
                    found += 1
        if not found:
            empty.append(name)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UserError(f"{what} {root}: no images in class folder(s) {shown}")
    return FolderIndex(root, classes, samples)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS) and not os.path.basename(path).startswith(".")


# ---- samplers -----------------------------------------------------------------------

def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x5A3D]).permutation(n)


class GlobalBatchSampler(Sampler):
    """Per rank, per step, the rank's slice of the step's global batch of (index, epoch).

    Global batch g of an epoch is perm[g*B:(g+1)*B]; rank r gets its r-th 1/W slice.
    `set_epoch(epoch, start_step)` skips already-trained steps without loading them.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int,
                 shuffle: bool = True):
        if global_batch % world:
            raise UserError(f"--batch_size {global_batch} is not divisible by the "
                            f"{world} processes")
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.per_rank = global_batch // world
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = n // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step)

    def _perm(self, epoch: int) -> np.ndarray:
        return epoch_permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)

    def batch_indices(self, epoch: int, step: int) -> list[int]:
        """Dataset indices this rank trains on at `step` of `epoch` (for checks/debugging)."""
        lo = step * self.global_batch + self.rank * self.per_rank
        return [int(i) for i in self._perm(epoch)[lo:lo + self.per_rank]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self._perm(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.global_batch + self.rank * self.per_rank
            yield [(int(i), self.epoch) for i in perm[lo:lo + self.per_rank]]


class ShardSampler(Sampler):
    """Indices rank, rank+W, rank+2W, ...: disjoint shards, no padding, exact cover."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


# ---- loaders ------------------------------------------------------------------------

def _seed_worker(worker_id: int) -> None:
    # Ctrl-C and schedulers signal the whole process group; the main process handles the
    # stop (finish the step, save) and shuts its workers down itself, so workers must not
    # die first and turn a clean stop into a "worker killed" crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Augmentation uses its own per-sample generators; this only makes any other
    # library randomness in workers reproducible.
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


_WORKER_ERROR = re.compile(r"BadImageError: (cannot read image .*)")


def reraise_worker_error(e: BaseException) -> None:
    """Turn a DataLoader worker's re-raised BadImageError into a one-line BadImageError."""
    m = _WORKER_ERROR.search(str(e))
    if m is not None:
        raise BadImageError(m.group(1).strip()) from None


class _Loader:
    """A DataLoader plus what the training loop needs to know about it."""

    def __init__(self, loader: DataLoader, dataset: SeededImageFolder, num_classes: int,
                 input_format: str, classes: list[str]):
        self.loader, self.dataset = loader, dataset
        self.num_classes, self.input_format, self.classes = num_classes, input_format, classes

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a worker's error arrives re-wrapped
                reraise_worker_error(e)
                raise
            yield batch

    def prepare(self, batch, device: torch.device, channels_last: bool = False):
        return prepare_batch(batch, device, self.input_format, channels_last)


class TrainLoader(_Loader):
    def __init__(self, loader, dataset, num_classes, input_format, classes,
                 sampler: GlobalBatchSampler):
        super().__init__(loader, dataset, num_classes, input_format, classes)
        self.sampler = sampler
        self.steps_per_epoch = sampler.steps_per_epoch
        self.batch_size = sampler.global_batch
        self.batch_size_per_rank = sampler.per_rank

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)


class ValLoader(_Loader):
    @property
    def num_samples(self) -> int:
        return len(self.dataset)


def _num_classes(folder, classes: int | None, what: str) -> int:
    found = len(folder.classes)
    if classes is None:
        return found
    if classes < found:
        raise UserError(f"{what} has {found} class folders but --classes is {classes}")
    return int(classes)


def _check_format(input_format: str) -> None:
    if input_format not in INPUT_FORMATS:
        raise UserError(f"unknown input format '{input_format}' (choose from "
                        f"{', '.join(INPUT_FORMATS)})")


def build_train_loader(root: str, input_size: int, batch_size: int, env, workers: int,
                       seed: int, *, input_format: str = DEFAULT_INPUT_FORMAT,
                       classes: int | None = None, min_scale: float = 0.08,
                       lighting_std: float = 0.1, persistent: bool = True,
                       what: str = "--train_dir",
                       crop_ratio: tuple[float, float] = CROP_RATIO) -> TrainLoader:
    """Training loader; `batch_size` is GLOBAL (split evenly over env.world_size ranks)."""
    _check_format(input_format)
    folder = scan_image_folder(root, what)
    num_classes = _num_classes(folder, classes, what)
    dataset = SeededImageFolder(folder.samples, input_size, train=True, seed=seed,
                                min_scale=min_scale, lighting_std=lighting_std,
                                crop_ratio=crop_ratio)
    sampler = GlobalBatchSampler(len(dataset), batch_size, env.rank, env.world_size, seed)
    if sampler.steps_per_epoch == 0:
        raise UserError(f"{what} has {len(dataset)} images, fewer than one global batch "
                        f"(--batch_size {batch_size})")
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        pin_memory=env.device.type == "cuda",
                        persistent_workers=persistent and workers > 0,
                        worker_init_fn=_seed_worker if workers > 0 else None,
                        prefetch_factor=4 if workers > 0 else None)
    return TrainLoader(loader, dataset, num_classes, input_format, list(folder.classes), sampler)


def build_val_loader(root: str, input_size: int, batch_size_per_rank: int, env,
                     workers: int, input_format: str = DEFAULT_INPUT_FORMAT, *,
                     classes: int | None = None, what: str = "--test_dir") -> ValLoader:
    """Validation loader over this rank's disjoint shard (no padding, no duplicates)."""
    _check_format(input_format)
    folder = scan_image_folder(root, what)
    num_classes = _num_classes(folder, classes, what)
    dataset = SeededImageFolder(folder.samples, input_size, train=False)
    sampler = ShardSampler(len(dataset), env.rank, env.world_size)
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(dataset, batch_size=batch_size_per_rank, sampler=sampler,
                        num_workers=workers, pin_memory=env.device.type == "cuda",
                        drop_last=False)
    return ValLoader(loader, dataset, num_classes, input_format, list(folder.classes))


# ---- device-side batch preparation -----------------------------------------------------

_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device.type, device.index)
    if key not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN, device=device).mul_(255).view(1, 3, 1, 1)
        inv_std = torch.tensor(IMAGENET_STD, device=device).mul_(255).reciprocal_().view(1, 3, 1, 1)
        _STATS[key] = (mean, inv_std)
    return _STATS[key]


def prepare_batch(batch, device: torch.device, input_format: str = DEFAULT_INPUT_FORMAT,
                  channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels[, lighting]) from a loader -> (float32 input, labels) on device."""
    images, labels = batch[0], batch[1]
    lighting = batch[2] if len(batch) > 2 else None
    non_blocking = device.type == "cuda"
    x = images.to(device, non_blocking=non_blocking)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.float()
    if lighting is not None:
        x.add_(lighting.to(device, non_blocking=non_blocking).mul(255.0).view(-1, 3, 1, 1))
    if input_format == "bgr255":
        x = x.flip(1)  # RGB -> BGR, values stay 0-255 as the reference fed them
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    else:
        mean, inv_std = _mean_std(device)
        x.sub_(mean).mul_(inv_std)
    return x, labels.to(device, non_blocking=non_blocking)


__all__ = ["INPUT_FORMATS", "DEFAULT_INPUT_FORMAT", "IMAGENET_MEAN", "IMAGENET_STD",
           "PCA_EIGVAL", "PCA_EIGVEC", "BadImageError", "val_resize_size", "add_data_args",
           "default_workers",
           "random_resized_crop_params", "SeededImageFolder", "FolderIndex", "scan_image_folder",
           "epoch_permutation", "GlobalBatchSampler", "ShardSampler", "TrainLoader",
           "ValLoader", "build_train_loader", "build_val_loader", "prepare_batch",
           "reraise_worker_error"]
