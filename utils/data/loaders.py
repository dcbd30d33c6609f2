"""Data loaders shared by supernet training, retraining and SPOS scoring.

Design:
* Workers decode and crop, and hand over **uint8** CHW tensors (4x less to pin and copy
  than float); conversion to float, PCA lighting, normalisation and the optional
  channels_last layout happen on the device in `prepare_batch`.
* What the data is comes from the dataset registry (utils.data.datasets, `--dataset`,
  default imagefolder): its splits, class names and normalisation mean/std. The
  transforms are utils.data.transforms, the samplers utils.data.samplers.
* Workers shut down with the loader: `close()` / `with loader:`, and at interpreter exit
  (training workers ignore SIGTERM, which used to hang exit after a partial epoch).
* A corrupt or unreadable image raises `BadImageError` (a `UserError`: one-line message
  naming the file), also when it happens inside a DataLoader worker.

Public API (stable; add, don't break):

    build_train_loader(root, input_size, batch_size, env, workers, seed, *,
                       input_format="rgb", classes=None, min_scale=0.08,
                       lighting_std=0.1, persistent=True, crop_ratio=(3/4, 4/3),
                       reduced_decode=True, resize_mode="antialias", dataset=None)
        -> TrainLoader   (workers=None: default_workers(); crop_ratio=(1, 1): square crops;
                          dataset: a registered name or a DatasetSpec, None = imagefolder)
        TrainLoader: set_epoch(epoch, start_step=0); iter -> (uint8 [b,3,H,W],
        int64 labels [b], float lighting [b,3]); len = steps left in the epoch;
        .steps_per_epoch, .batch_size (global), .batch_size_per_rank, .num_classes,
        .classes, .dataset (the SeededImages), .spec (the DatasetSpec), .input_format,
        .prepare(batch, device, channels_last=False),
        .sampler.batch_indices(epoch, step) (the indices this rank trains on),
        .first_unreadable(rank=0, world=1), .close() (stop the workers now; `with loader:`)
    build_val_loader(root, input_size, batch_size_per_rank, env, workers,
                     input_format="rgb", *, classes=None, reduced_decode=True,
                     resize_mode="antialias", dataset=None, crop_pct=0.875) -> ValLoader
        ValLoader: iter -> (uint8 images, int64 labels); .num_samples (whole set),
        .num_classes, .classes, .dataset, .spec, .input_format, .resize_mode,
        .relabel(mapping), .prepare(batch, device, channels_last), .first_unreadable(),
        .close()
    prepare_batch(batch, device, input_format="rgb", channels_last=False, *, dataset=None)
        -> (float32 images on device, labels on device); rgb normalises with the
        dataset's mean/std (None = imagefolder's, ImageNet's)
    add_dataset_arg(parser, default="imagefolder", help=None)   # --dataset alone
    add_val_crop_arg(parser, default=0.875)   # --val-crop-pct (0.1..1.0; None: resolved later)
    add_data_args(parser, workers_default=None, dataset_default="imagefolder")
                               # --dataset (choices: the registry; default imagefolder),
                               # --workers (default None = default_workers()),
                               # --input-format, --resize-mode (default None = antialias)
    add_augment_args(parser); augment_kwargs(args) -> build_train_loader keyword arguments
        (resize_mode included; not dataset)
    default_workers() -> int   # CPUs available per local process, at most 8
    reraise_worker_error(e)    # a worker's BadImageError -> one-line BadImageError
"""
from __future__ import annotations

import argparse
import atexit
import math
import os
import random
import re
import signal
import weakref
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.cli.argtypes import finite_float, nonneg_float, workers_int
from utils.data.datasets import DEFAULT_DATASET, DATASETS, DatasetSpec, get_dataset
from utils.data.folder import BadImageError, SeededImageFolder
# first_unreadable_image is re-exported for retrain/train_from_scratch.py, which imports it
# from here; loaders' own check is `loader.first_unreadable(rank, world)`.
from utils.data.folder import first_unreadable_image  # noqa: F401
from utils.data.samplers import GlobalBatchSampler, ShardSampler
from utils.data.transforms import (CROP_RATIO, DEFAULT_INPUT_FORMAT, DEFAULT_RESIZE_MODE,
                                   INPUT_FORMATS, RESIZE_MODES, VAL_CROP_FRACTION, VAL_CROP_RANGE,
                                   SeededImages,
                                   check_resize_mode)
from utils.errors import UserError


def default_workers(cap: int = 8) -> int:
    """Loader workers per process: the CPUs this process may use, shared per node, <= cap."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(cap, cpus // max(1, local_world)))


def add_val_crop_arg(parser: argparse.ArgumentParser,
                     default: float | None = VAL_CROP_FRACTION) -> None:
    """--val-crop-pct (timm's --crop-pct): the validation centre crop's fraction of the
    resized image. 0.875 (224 of 256) is the ImageNet convention and the original's.
    `default=None`: the stage resolves it (a checkpoint's recorded value, else 0.875)."""
    lo, hi = VAL_CROP_RANGE
    said = (f"default {VAL_CROP_FRACTION}" if default is not None else
            f"default: the checkpoint's, else {VAL_CROP_FRACTION}")
    parser.add_argument("--val-crop-pct", "--val_crop_pct", "--crop-pct", dest="val_crop_pct",
                        type=finite_float(lo, hi), default=default,
                        help=f"validation: resize the shorter side to input-size / this, then "
                             f"take the centre input-size square, {lo}..{hi} ({said}; 1.0 "
                             f"keeps small centred images whole)")


def add_dataset_arg(parser, default: str | None = DEFAULT_DATASET, help: str | None = None
                    ) -> None:
    """--dataset, its choices the registry's names when the parser is built (load plug-ins
    first: utils.plugins.load_plugins_from_argv). `default=None`: the stage resolves it
    (e.g. the dataset a checkpoint records)."""
    parser.add_argument("--dataset", default=default, choices=DATASETS.names(),
                        help=help or "what the data directories hold: imagefolder = "
                                     "<root>/<class>/<image> (default); fashion_mnist = "
                                     "'debian', 'slice' or a folder of its idx files (see "
                                     "utils/data/datasets.py)")


def add_data_args(parser: argparse.ArgumentParser, workers_default: int | None = None,
                  dataset_default: str | None = DEFAULT_DATASET) -> None:
    """--dataset, --workers (None = `default_workers()`, resolved by the loader builders),
    --input-format and --resize-mode. --dataset's choices are the registry's names when
    the parser is built: load plug-ins first (utils.plugins.load_plugins_from_argv).
    `dataset_default=None`: the stage resolves it (see add_dataset_arg)."""
    add_dataset_arg(parser, dataset_default, None if dataset_default is not None else (
        "what the data directories hold: imagefolder = <root>/<class>/<image>; "
        "fashion_mnist = 'debian', 'slice' or a folder of its idx files (see "
        "utils/data/datasets.py); default: the checkpoint's when resuming or evaluating, "
        "else imagefolder"))
    parser.add_argument("--workers", type=workers_int, default=workers_default,
                        help="data loader worker processes per process (default: the CPUs "
                             "available to it, at most 8)")
    parser.add_argument("--input-format", "--input_format", default=DEFAULT_INPUT_FORMAT,
                        choices=INPUT_FORMATS, dest="input_format",
                        help="network input convention: rgb = RGB normalised with the "
                             "dataset's mean/std (ImageNet's for imagefolder; default); "
                             "bgr255 = the reference's BGR 0-255")
    parser.add_argument("--resize-mode", "--resize_mode", default=None, choices=RESIZE_MODES,
                        dest="resize_mode",
                        help="how training crops and validation images are resized: "
                             "antialias = antialiased bilinear, as torchvision (default); "
                             "linear = the original's OpenCV INTER_LINEAR (no antialiasing; "
                             "validation resizes the whole image, shorter side 256, then "
                             "centre-crops; JPEGs decoded at full size)")


def add_augment_args(parser: argparse.ArgumentParser) -> None:
    """Training augmentation knobs; the defaults are the ImageNet recipe of docs/method.md."""
    g = parser.add_argument_group("augmentation")
    g.add_argument("--min-scale", "--min_scale", dest="min_scale", default=0.08,
                   type=finite_float(0.0, 1.0, lo_open=True),
                   help="smallest crop area fraction of the random resized crop (default: "
                        "0.08; small, already-centred images such as the demo's want ~0.35)")
    g.add_argument("--lighting", type=nonneg_float, default=0.1,
                   help="std of the PCA lighting noise, 0 disables it (default: 0.1)")
    g.add_argument("--square-crop", "--square_crop", dest="square_crop", action="store_true",
                   help="crop at aspect 1 as the reference did (default: 3/4-4/3)")


def augment_kwargs(args: argparse.Namespace) -> dict:
    """build_train_loader keyword arguments from add_augment_args' flags."""
    if not 0 < args.min_scale <= 1:  # (nan fails both comparisons)
        raise UserError(f"--min-scale must be in (0, 1], got {args.min_scale}")
    if not args.lighting >= 0 or not math.isfinite(args.lighting):
        raise UserError(f"--lighting must be >= 0 and finite, got {args.lighting}")
    return dict(min_scale=args.min_scale, lighting_std=args.lighting,
                crop_ratio=(1.0, 1.0) if args.square_crop else CROP_RATIO,
                resize_mode=getattr(args, "resize_mode", None) or DEFAULT_RESIZE_MODE)


# ---- workers ------------------------------------------------------------------------

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


# Worker shutdown at interpreter exit. Training workers ignore SIGTERM (see _seed_worker),
# and multiprocessing's own exit handler terminates daemonic children with SIGTERM and
# then joins them: a loader whose workers were still running at exit (persistent
# workers, or an iteration left unfinished and still referenced) hung the process there.
# Torch shuts down only pinned-memory persistent iterators at exit, so we shut down ours.
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()
_EXIT_HOOKS_REGISTERED = False


def _shutdown_iterator(it) -> None:
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _shutdown_live_iterators() -> None:
    for it in list(_LIVE_ITERATORS):
        _shutdown_iterator(it)


def _track_workers(it, owner: "weakref.WeakSet") -> None:
    """Remember a multi-process iterator so that close() and interpreter exit stop it."""
    global _EXIT_HOOKS_REGISTERED
    if not getattr(it, "_workers", None):
        return  # in-process iterator: nothing to shut down
    owner.add(it)
    _LIVE_ITERATORS.add(it)
    if not _EXIT_HOOKS_REGISTERED:
        _EXIT_HOOKS_REGISTERED = True
        # atexit runs handlers last-registered-first: registered now, after torch's
        # "interpreter exiting" flag (which turns _shutdown_workers into a no-op) and
        # after multiprocessing's exit handler, this runs before both. Should something
        # re-register multiprocessing's handler later (multiprocessing.get_logger does),
        # the Finalize runs inside that handler, before it terminates and joins children.
        atexit.register(_shutdown_live_iterators)
        import multiprocessing.util as mp_util
        mp_util.Finalize(None, _shutdown_live_iterators, exitpriority=100)


class _Loader:
    """A DataLoader plus what the training loop needs to know about it.

    `close()` (or leaving a `with loader:` block) stops its worker processes at once; a
    later iteration starts new ones. Workers still running at interpreter exit are stopped
    then, so scripts exit even after a partial epoch with persistent workers.
    """

    def __init__(self, loader: DataLoader, dataset: SeededImages, num_classes: int,
                 input_format: str, classes: list[str], spec: DatasetSpec | None = None):
        self.loader, self.dataset = loader, dataset
        self.num_classes, self.input_format, self.classes = num_classes, input_format, classes
        self.spec = spec if spec is not None else get_dataset(None)
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        self._closes = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        closes = self._closes
        it = iter(self.loader)
        _track_workers(it, self._iterators)
        while True:
            if self._closes != closes:
                return  # closed mid-iteration: its workers are gone
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a worker's error arrives re-wrapped
                reraise_worker_error(e)
                raise
            yield batch

    def close(self) -> None:
        """Stop this loader's worker processes now (iterations in progress end)."""
        self._closes += 1
        for it in list(self._iterators):
            _shutdown_iterator(it)
        self._iterators = weakref.WeakSet()
        if getattr(self.loader, "_iterator", None) is not None:
            self.loader._iterator = None  # persistent workers: the next iter() starts anew

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def resize_mode(self) -> str:
        return self.dataset.resize_mode

    def first_unreadable(self, rank: int = 0, world: int = 1) -> str | None:
        """One-line message of the first unreadable image of shard `rank` of `world`
        (headers only: cheap), None when all open (always None for in-memory images)."""
        return self.dataset.first_unreadable(rank, world)

    def prepare(self, batch, device: torch.device, channels_last: bool = False):
        return prepare_batch(batch, device, self.input_format, channels_last, dataset=self.spec)


class TrainLoader(_Loader):
    def __init__(self, loader, dataset, num_classes, input_format, classes,
                 sampler: GlobalBatchSampler, spec: DatasetSpec | None = None):
        super().__init__(loader, dataset, num_classes, input_format, classes, spec)
        self.sampler = sampler
        self.steps_per_epoch = sampler.steps_per_epoch
        self.batch_size = sampler.global_batch
        self.batch_size_per_rank = sampler.per_rank

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)

    def prepare(self, batch, device: torch.device, channels_last: bool = False):
        if self.dataset.lighting_std == 0:
            batch = batch[:2]  # all-zero offsets: lighting is the identity, skip its passes
        return prepare_batch(batch, device, self.input_format, channels_last, dataset=self.spec)


class ValLoader(_Loader):
    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def relabel(self, mapping: Sequence[int] | None) -> None:
        """Label class k's images mapping[k] (e.g. a checkpoint's output index of that
        class, matched by name: utils.data.identity.label_map); call before iterating."""
        if mapping is not None:
            self.dataset.samples = [(p, int(mapping[y])) for p, y in self.dataset.samples]


def _num_classes(dataset: SeededImages, classes: int | None, what: str) -> int:
    found = len(dataset.classes)
    if classes is None:
        return found
    if classes < found:
        kind = "class folders" if isinstance(dataset, SeededImageFolder) else "classes"
        raise UserError(f"{what} has {found} {kind} but --classes is {classes}")
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
                       crop_ratio: tuple[float, float] = CROP_RATIO,
                       reduced_decode: bool = True,
                       resize_mode: str = DEFAULT_RESIZE_MODE,
                       dataset: "str | DatasetSpec | None" = None) -> TrainLoader:
    """Training loader; `batch_size` is GLOBAL (split evenly over env.world_size ranks).

    `dataset`: a registered name or a DatasetSpec (None: imagefolder), whose train split
    `root` names. `reduced_decode=False` decodes every JPEG at full size (see
    SeededImageFolder); `resize_mode` "antialias" or "linear" (the original's OpenCV
    resize; full decoding).
    """
    _check_format(input_format)
    resize_mode = check_resize_mode(resize_mode)
    spec = get_dataset(dataset)
    ds = spec.train_dataset(root, input_size, what=what, seed=seed, min_scale=min_scale,
                            lighting_std=lighting_std, crop_ratio=crop_ratio,
                            reduced_decode=reduced_decode, resize_mode=resize_mode)
    num_classes = _num_classes(ds, classes, what)
    sampler = GlobalBatchSampler(len(ds), batch_size, env.rank, env.world_size, seed)
    if sampler.steps_per_epoch == 0:
        raise UserError(f"{what} has {len(ds)} images, fewer than one global batch "
                        f"(--batch_size {batch_size})")
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                        pin_memory=env.device.type == "cuda",
                        persistent_workers=persistent and workers > 0,
                        worker_init_fn=_seed_worker if workers > 0 else None,
                        prefetch_factor=4 if workers > 0 else None)
    return TrainLoader(loader, ds, num_classes, input_format, list(ds.classes), sampler, spec)


def build_val_loader(root: str, input_size: int, batch_size_per_rank: int, env,
                     workers: int, input_format: str = DEFAULT_INPUT_FORMAT, *,
                     classes: int | None = None, what: str = "--test_dir",
                     reduced_decode: bool = True,
                     resize_mode: str = DEFAULT_RESIZE_MODE,
                     dataset: "str | DatasetSpec | None" = None,
                     crop_pct: float = VAL_CROP_FRACTION) -> ValLoader:
    """Validation loader over this rank's disjoint shard (no padding, no duplicates).

    `dataset`: as build_train_loader; `root` names its validation split. `crop_pct`: the
    centre crop's fraction of the resized image (utils.data.transforms.val_resize_size).
    `resize_mode`: "antialias" (resize the centre box with antialiased bilinear) or
    "linear" (the original's: OpenCV INTER_LINEAR resize of the whole image, then crop).
    """
    _check_format(input_format)
    resize_mode = check_resize_mode(resize_mode)
    spec = get_dataset(dataset)
    ds = spec.val_dataset(root, input_size, what=what, reduced_decode=reduced_decode,
                          resize_mode=resize_mode, crop_pct=crop_pct)
    num_classes = _num_classes(ds, classes, what)
    sampler = ShardSampler(len(ds), env.rank, env.world_size)
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(ds, batch_size=batch_size_per_rank, sampler=sampler,
                        num_workers=workers, pin_memory=env.device.type == "cuda",
                        drop_last=False)
    return ValLoader(loader, ds, num_classes, input_format, list(ds.classes), spec)


# ---- device-side batch preparation -----------------------------------------------------

_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _consts(device: torch.device, mean: Sequence[float], std: Sequence[float]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(255 as a 0-dim tensor, 1 / (255 std), -mean / std), shape [1, 3, 1, 1], on `device`."""
    key = (device.type, device.index, tuple(mean), tuple(std))
    if key not in _STATS:
        mean = torch.tensor(mean, device=device).mul_(255).view(1, 3, 1, 1)
        inv_std = torch.tensor(std, device=device).mul_(255).reciprocal_().view(1, 3, 1, 1)
        # A device tensor, not a Python number: CUDA divides by a CPU scalar as a multiply
        # by its reciprocal, which rounds x / 255 differently from numpy for half the values.
        c255 = torch.tensor(255.0, device=device)
        _STATS[key] = (c255, inv_std, (-mean).mul_(inv_std))
    return _STATS[key]


def prepare_batch(batch, device: torch.device, input_format: str = DEFAULT_INPUT_FORMAT,
                  channels_last: bool = False, *,
                  dataset: "str | DatasetSpec | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels[, lighting]) from a loader -> (float32 input, labels) on device.

    lighting: [b, 3] RGB offsets in [0, 1] units (`pca_lighting_offset`). Each image
    becomes, as in the original's LighteningJitter, the float32 computation
    floor(clip((x / 255 + offset) * 255, 0, 255)) (its uint8 conversion truncates), per
    RGB channel; then bgr255 flips the channels to B, G, R, and rgb normalises with the
    dataset's mean and std (`dataset`: a name or DatasetSpec; None: imagefolder, i.e.
    ImageNet's). (The original adds a float64 offset before rounding to float32, this a
    float32 one: the two agreed on all 30M pixels of 200 random draws; where they cannot,
    it is one grey level.)
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    images, labels = batch[0], batch[1]
    lighting = batch[2] if len(batch) > 2 else None
    non_blocking = device.type == "cuda"
    x = images.to(device, non_blocking=non_blocking)
    bgr = input_format == "bgr255"
    if bgr:
        # RGB -> BGR, on uint8 (4x less to move); values stay 0-255 as the reference fed them
        x = x.flip(1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.float()  # keeps the memory format; the in-place passes below keep it too
    c255, inv_std, shift = _consts(device, spec.mean, spec.std)
    if lighting is not None:
        offset = lighting.to(device, torch.float32, non_blocking=non_blocking).view(-1, 3, 1, 1)
        if bgr:
            offset = offset.flip(1)  # the image's channels are B, G, R by now
        x.div_(c255).add_(offset).mul_(255.0).clamp_(0.0, 255.0).floor_()
    if not bgr:
        x.mul_(inv_std).add_(shift)
    return x, labels.to(device, non_blocking=non_blocking)


__all__ = ["add_data_args", "add_dataset_arg", "add_val_crop_arg", "add_augment_args", "augment_kwargs", "default_workers",
           "TrainLoader", "ValLoader", "build_train_loader", "build_val_loader",
           "prepare_batch", "reraise_worker_error", "BadImageError"]
