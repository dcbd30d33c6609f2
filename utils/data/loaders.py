"""ImageFolder loaders shared by supernet training, retraining and SPOS scoring.

Design:
* Workers decode and crop, and hand over **uint8** CHW tensors (4x less to pin and copy
  than float); conversion to float, PCA lighting, normalisation and the optional
  channels_last layout happen on the device in `prepare_batch`.
* Training augmentation (docs/method.md): random resized crop (area 0.08-1, aspect
  3/4-4/3 as torchvision), horizontal flip, PCA lighting noise (std 0.1). Its randomness
  depends only on (seed, epoch, sample index): every sample gets its own torch.Generator,
  so a run resumed mid-epoch sees exactly the images an uninterrupted run would, whatever
  the worker count. Lighting is a per-image RGB offset, so the worker only draws it and
  the device applies it, with the original's arithmetic: the lit image is
  uint8(clip((x / 255 + offset) * 255, 0, 255)) in float32 (clipped, then truncated).
* Resize modes (`resize_mode`, the --resize-mode flag): "antialias" (default) resizes with
  antialiased bilinear filtering (PIL's BILINEAR, what torchvision does on PIL images);
  "linear" reproduces the original's OpenCV cv2.INTER_LINEAR (bilinear interpolation at
  half-pixel centres, no antialiasing) and, for validation, its OpencvResize of the
  whole image (shorter side 256, the other int(256 / short * long + 0.5)) then a centre
  crop. Without OpenCV it runs on torch (float bilinear, rounded half up); OpenCV's
  11-bit fixed-point weights can differ from it by one grey level. Linear mode decodes
  every JPEG at full size, as the original did.
* Sharding without padding: `GlobalBatchSampler` cuts each epoch's permutation into
  global batches and hands rank r the r-th slice of each, so no two ranks see the same
  sample and every rank runs the same number of steps; the incomplete last global batch
  is dropped. `ShardSampler` (validation) gives rank r the indices r, r+W, r+2W, ...: the
  shards are disjoint and cover the set exactly, so summed counts over ranks are exact.
* Decoding cost (see bench/data_loader.py), antialias mode: the crop box is drawn from
  the header's full-size dimensions before any pixel is decoded; a JPEG whose crop is
  >= 2x the input size is then decoded at 1/2, 1/4 or 1/8 scale (PIL `draft`, libjpeg's
  scaled IDCT; the largest factor keeping the crop >= the input size) with the box mapped
  onto it. Only the crop leaves PIL, and torch's vectorised uint8 antialiased-bilinear
  kernel resizes it (PIL's filter; results within 1 grey level). Same crop boxes and
  flips for the same seed as full decoding; pixels differ slightly where the reduced
  decode is used (mean ~1 grey level). `reduced_decode=False` turns it off.
* Workers shut down with the loader: `close()` / `with loader:`, and at interpreter exit
  (training workers ignore SIGTERM, which used to hang exit after a partial epoch).
* A corrupt or unreadable image raises `BadImageError` (a `UserError`: one-line message
  naming the file), also when it happens inside a DataLoader worker.

Public API (stable; add, don't break):

    INPUT_FORMATS = ("rgb", "bgr255"); DEFAULT_INPUT_FORMAT = "rgb"
    RESIZE_MODES = ("antialias", "linear"); DEFAULT_RESIZE_MODE = "antialias"
    IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC (BGR rows, as the original
        stores it), PCA_EIGVEC_RGB (its rows reversed: the matrix applied)
    pca_lighting_offset(alpha) -> float32 [3] RGB offset of one lighting draw
    val_resize_size(input_size) -> int           # round(input / 0.875)
    reference_resize_size(width, height, short) -> (new_width, new_height): the
        original's OpencvResize rule (linear mode's validation resize)
    linear_resize(uint8 [3, H, W], height, width) -> uint8: cv2.INTER_LINEAR on torch
    linear_val_crop(rgb_image, input_size) -> uint8: the original's validation transform
    scan_image_folder(root, what="--train_dir") -> FolderIndex (.classes, .class_to_idx,
        .samples): torchvision ImageFolder's indexing without importing torchvision
    build_train_loader(root, input_size, batch_size, env, workers, seed, *,
                       input_format="rgb", classes=None, min_scale=0.08,
                       lighting_std=0.1, persistent=True, crop_ratio=(3/4, 4/3),
                       reduced_decode=True, resize_mode="antialias")
        -> TrainLoader   (workers=None: default_workers(); crop_ratio=(1, 1): square crops)
        TrainLoader: set_epoch(epoch, start_step=0); iter -> (uint8 [b,3,H,W],
        int64 labels [b], float lighting [b,3]); len = steps left in the epoch;
        .steps_per_epoch, .batch_size (global), .batch_size_per_rank, .num_classes,
        .dataset, .input_format, .prepare(batch, device, channels_last=False),
        .sampler.batch_indices(epoch, step) (the indices this rank trains on),
        .close() (stop the workers now; also `with loader:`)
    build_val_loader(root, input_size, batch_size_per_rank, env, workers,
                     input_format="rgb", *, classes=None, reduced_decode=True,
                     resize_mode="antialias") -> ValLoader
        ValLoader: iter -> (uint8 images, int64 labels); .num_samples (whole set),
        .num_classes, .dataset, .input_format, .resize_mode,
        .prepare(batch, device, channels_last), .close()
    prepare_batch(batch, device, input_format="rgb", channels_last=False)
        -> (float32 images on device, labels on device)
    GlobalBatchSampler, ShardSampler, SeededImageFolder, BadImageError
    SeededImageFolder(samples, input_size, train, seed=0, ..., reduced_decode=True,
                      resize_mode="antialias")
        .crop_box(index, epoch=0) -> (top, left, h, w) on the full-size image
    random_resized_crop_params(width, height, gen, scale, ratio) -> (top, left, h, w)
    val_crop_box(width, height, input_size) -> full-size (left, top, right, bottom)
    jpeg_reduction(region_w, region_h, out_w, out_h) -> 1, 2, 4 or 8
    open_image(path) -> PIL image, header only; decode_rgb(it, path, reduction=1)
        -> (RGB image, scale: full-size coordinates / scale = its coordinates)
    resized_crop(rgb_image, top, left, h, w, size, mode="antialias")
        -> uint8 [3, size, size]
    add_data_args(parser)      # --workers (default None = default_workers()),
                               # --input-format, --resize-mode (default None = antialias)
    add_augment_args(parser); augment_kwargs(args) -> build_train_loader keyword arguments
        (resize_mode included)
    default_workers() -> int   # CPUs available per local process, at most 8
"""
from __future__ import annotations

import argparse
import atexit
import io
import math
import os
import random
import re
import signal
import warnings
import weakref
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.cli.common import UserError, finite_float, nonneg_float, workers_int

INPUT_FORMATS = ("rgb", "bgr255")
# rgb: ImageNet mean/std normalised RGB (torchvision convention, the default);
# bgr255: the reference's BGR channels in 0-255 without normalisation.
DEFAULT_INPUT_FORMAT = "rgb"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("antialias", "linear")
# antialias: antialiased bilinear (PIL's BILINEAR / torchvision on PIL images), the default;
# linear: the original's cv2.INTER_LINEAR (no antialiasing) and OpencvResize rule.
DEFAULT_RESIZE_MODE = "antialias"
# PCA lighting (AlexNet-style) on pixel values in [0, 1] (docs/method.md). PCA_EIGVEC is
# the matrix exactly as the original code stores it: columns are the eigenvectors, ROWS
# the channels in B, G, R order. The original reverses its rows (`eigvec[::-1, :]`)
# before adding the offset to an RGB image, so the matrix applied is PCA_EIGVEC_RGB
# (rows R, G, B; the usual fb.resnet.torch matrix); so is it here. The offset of a draw
# alpha ~ N(0, std^2)^3 is PCA_EIGVEC_RGB @ (alpha * PCA_EIGVAL), per RGB channel.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5836, -0.6948, 0.4203),
              (-0.5808, -0.0045, -0.8140),
              (-0.5675, 0.7192, 0.4009))
PCA_EIGVEC_RGB = tuple(reversed(PCA_EIGVEC))
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
VAL_CROP_FRACTION = 0.875
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageError(UserError):
    """An image that cannot be decoded; the message names the file."""


def val_resize_size(input_size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, as the ImageNet convention."""
    return int(round(input_size / VAL_CROP_FRACTION))


def reference_resize_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(new_width, new_height) of the original's OpencvResize(`short`): the shorter side
    becomes `short` (the height when the image is square) and the other
    int(short / shorter * longer + 0.5), in that float order (linear mode's rule; antialias
    mode rounds longer * short / shorter half to even, which can differ by one pixel)."""
    if height < width:
        return int(short / height * width + 0.5), short
    return short, int(short / width * height + 0.5)


# The lighting constants as the original uses them: float32 values, float64 arithmetic.
_EIGVEC_RGB64 = torch.tensor(PCA_EIGVEC_RGB, dtype=torch.float32).double()
_EIGVAL64 = torch.tensor(PCA_EIGVAL, dtype=torch.float32).double()


def pca_lighting_offset(alpha) -> torch.Tensor:
    """float32 [3] RGB offset (in [0, 1] pixel units) of the lighting draw `alpha` (the
    three eigenvectors' N(0, std^2) coefficients): PCA_EIGVEC_RGB @ (alpha * PCA_EIGVAL).
    `prepare_batch` applies it to the image's R, G, B channels, in that order."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(3)
    return (_EIGVEC_RGB64 @ (_EIGVAL64 * alpha)).float()


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
    parser.add_argument("--workers", type=workers_int, default=workers_default,
                        help="data loader worker processes per process (default: the CPUs "
                             "available to it, at most 8)")
    parser.add_argument("--input-format", "--input_format", default=DEFAULT_INPUT_FORMAT,
                        choices=INPUT_FORMATS, dest="input_format",
                        help="network input convention: rgb = ImageNet mean/std normalised "
                             "RGB (default); bgr255 = the reference's BGR 0-255")
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


# ---- decoding -----------------------------------------------------------------------

def _sample_seed(seed: int, epoch: int, index: int) -> int:
    # SeedSequence mixes the three integers well; 63 bits fit manual_seed.
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _bad_image(path: str, e: BaseException) -> BadImageError:
    if isinstance(e, UnidentifiedImageError):
        return BadImageError(f"cannot read image {path}: not an image or corrupt")
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return BadImageError(f"cannot read image {path}: {reason}")


def open_image(path: str) -> Image.Image:
    """The image at `path` with its header read and its pixels not yet decoded (see
    `decode_rgb`); a missing or unrecognised file is a one-line BadImageError."""
    try:
        with open(path, "rb") as f:
            # One read: PIL parses JPEG markers with many tiny reads, cheaper from memory.
            data = f.read()
    except OSError as e:
        raise _bad_image(path, e) from None
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise _bad_image(path, e) from None
    return img


def jpeg_reduction(region_w: float, region_h: float, out_w: int, out_h: int) -> int:
    """Largest JPEG DCT scale-down (8, 4, 2, else 1) that keeps a `region_w` x `region_h`
    region at least `out_w` x `out_h` pixels: the region is then still downsampled to the
    output, never upsampled, so the output loses no detail it could show."""
    for factor in (8, 4, 2):
        if region_w >= out_w * factor and region_h >= out_h * factor:
            return factor
    return 1


def decode_rgb(img: Image.Image, path: str, reduction: int = 1) -> tuple[Image.Image, float]:
    """Decode an opened image to RGB, a JPEG at 1/`reduction` scale (libjpeg's scaled IDCT,
    much cheaper than decoding everything and resampling it away).

    Returns (image, scale): full-size coordinates / scale = the image's coordinates.
    Errors are a one-line BadImageError naming `path`.
    """
    scale = 1.0
    try:
        if reduction > 1 and img.format == "JPEG":
            full_width = img.width
            # draft picks the largest power of two <= full size // requested size, which is
            # `reduction` itself; it returns the full image's box in reduced coordinates.
            drafted = img.draft("RGB", (img.width // reduction, img.height // reduction))
            if drafted is not None:
                scale = full_width / drafted[1][2]
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise _bad_image(path, e) from None
    return img, scale


def _hwc(img: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] array of an RGB image (read-only: it wraps PIL's bytes)."""
    return np.asarray(img)


_READ_ONLY_WARNED = False


def _tensor_view(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing a read-only array, for ops that never write to their input."""
    global _READ_ONLY_WARNED
    if _READ_ONLY_WARNED:
        return torch.from_numpy(arr)
    # torch warns about read-only arrays once per process; keep that once out of the logs
    # (catching warnings on every call would cost more than the conversion itself)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(arr)
    _READ_ONLY_WARNED = True
    return x


def _chw_tensor(hwc: np.ndarray) -> torch.Tensor:
    # numpy's strided copy is ~2x faster than torch's permute().contiguous() for uint8.
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return _chw_tensor(_hwc(img))


def _linear_resize_float(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float32 [3, height, width]: cv2.INTER_LINEAR of uint8 [3, H, W] before rounding."""
    return F.interpolate(x.unsqueeze(0).float(), size=(height, width), mode="bilinear",
                         align_corners=False, antialias=False)[0]


def _round_to_uint8(y: torch.Tensor) -> torch.Tensor:
    # Half up, as OpenCV's fixed-point rounding; contiguous CHW.
    return y.add(0.5).floor_().clamp_(0, 255).to(torch.uint8).contiguous()


def linear_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [3, height, width]: uint8 [3, H, W] resized as OpenCV's cv2.INTER_LINEAR does:
    bilinear interpolation between the two nearest pixels per axis at half-pixel centres
    (source = (dst + 0.5) * in / out - 0.5, clamped at the borders), no antialiasing.
    Computed in float32 and rounded half up; OpenCV's 11-bit fixed-point weights can give
    a value one grey level away."""
    return _round_to_uint8(_linear_resize_float(x, height, width))


def _check_resize_mode(mode: str) -> str:
    mode = mode or DEFAULT_RESIZE_MODE
    if mode not in RESIZE_MODES:
        raise UserError(f"unknown resize mode '{mode}' (choose from {', '.join(RESIZE_MODES)})")
    return mode


def resized_crop(img: Image.Image, top: int, left: int, h: int, w: int,
                 size: int, mode: str = DEFAULT_RESIZE_MODE) -> torch.Tensor:
    """uint8 [3, size, size]: the (top, left, h, w) crop of an RGB image, resized.

    mode "antialias": antialiased bilinear filtering, the filter of PIL's
    crop().resize(BILINEAR), which torchvision's RandomResizedCrop runs on PIL images
    (results agree within 1 grey level), from torch's vectorised uint8 kernel: ~2x
    faster, and it writes CHW directly. mode "linear": `linear_resize` (the original's
    cv2.resize(crop, INTER_LINEAR))."""
    # Crop before leaving PIL: copying pixels out of PIL is slow, so copy only the crop.
    crop = _hwc(img.crop((left, top, left + w, top + h)))
    if h == size and w == size:
        return _chw_tensor(crop)
    x = _tensor_view(crop).permute(2, 0, 1)
    if mode == "linear":
        return linear_resize(x, size, size)
    return F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def linear_val_crop(img: Image.Image, input_size: int) -> torch.Tensor:
    """uint8 [3, s, s]: the original's validation transform of a full-size RGB image:
    OpencvResize (the whole image, shorter side `val_resize_size(s)`, sizes by
    `reference_resize_size`, cv2.INTER_LINEAR) then torchvision's CenterCrop(s)."""
    s = input_size
    nw, nh = reference_resize_size(img.width, img.height, val_resize_size(s))
    y = _linear_resize_float(_tensor_view(_hwc(img)).permute(2, 0, 1), nh, nw)
    # CenterCrop's offsets: int(round((size - crop) / 2)), Python's half-to-even round.
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    return _round_to_uint8(y[:, top:top + s, left:left + s])


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


def val_crop_box(width: int, height: int, input_size: int) -> tuple[float, float, float, float]:
    """Full-size (left, top, right, bottom) box that becomes the validation input: the
    centre `input_size` square after resizing the shorter side to `val_resize_size`."""
    short = val_resize_size(input_size)
    if width <= height:
        nw, nh = short, int(round(height * short / width))
    else:
        nw, nh = int(round(width * short / height)), short
    left, top = int(round((nw - input_size) / 2.0)), int(round((nh - input_size) / 2.0))
    sx, sy = width / nw, height / nh
    return left * sx, top * sy, (left + input_size) * sx, (top + input_size) * sy


# ---- the dataset --------------------------------------------------------------------

class SeededImageFolder(Dataset):
    """ImageFolder samples, transformed with per-sample seeded randomness.

    Training items are addressed by (index, epoch) tuples, which `GlobalBatchSampler`
    yields; plain integer indices (epoch 0) also work. Validation mode is deterministic.

    `reduced_decode` (default on; antialias mode only): a JPEG whose crop is at least 2x
    the input size in both dimensions is decoded at 1/2, 1/4 or 1/8 scale (the largest
    that keeps the crop >= the input size) and the crop box is mapped onto the smaller
    image. The crop boxes are the same either way; pixel values differ a little
    (libjpeg's scaled IDCT instead of a bilinear filter for part of the downsampling, mean
    difference ~1 grey level). Its prefiltering would undo what `resize_mode="linear"`
    reproduces (the original's unfiltered OpenCV resize of the full decode), so linear
    mode always decodes at full size.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], input_size: int, train: bool,
                 seed: int = 0, min_scale: float = 0.08, lighting_std: float = 0.1,
                 crop_ratio: tuple[float, float] = CROP_RATIO, reduced_decode: bool = True,
                 resize_mode: str = DEFAULT_RESIZE_MODE):
        self.resize_mode = _check_resize_mode(resize_mode)
        self.samples = list(samples)
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.input_size = int(input_size)
        self.train = train
        self.seed = int(seed)
        self.min_scale = float(min_scale)
        self.lighting_std = float(lighting_std)
        self.reduced_decode = bool(reduced_decode)
        self._reduce = self.reduced_decode and self.resize_mode == "antialias"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (int(item), 0)
        path, label = self.samples[index]
        if not self.train:
            return self._val(path), label
        gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, index))
        x, lighting = self._train(path, gen)
        return x, label, lighting

    def crop_box(self, index: int, epoch: int = 0) -> tuple[int, int, int, int]:
        """Full-size (top, left, h, w) of training sample `index`'s crop in `epoch`."""
        path = self.samples[index][0]
        gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, index))
        img = open_image(path)
        return random_resized_crop_params(img.width, img.height, gen, (self.min_scale, 1.0),
                                          self.crop_ratio)

    def _train(self, path: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.input_size
        img = open_image(path)
        # The box is drawn on the full-size header dimensions, so it does not depend on
        # how the pixels are decoded.
        top, left, h, w = random_resized_crop_params(img.width, img.height, gen,
                                                     (self.min_scale, 1.0), self.crop_ratio)
        reduction = jpeg_reduction(w, h, s, s) if self._reduce else 1
        img, scale = decode_rgb(img, path, reduction)
        if scale == 1.0:
            x = resized_crop(img, top, left, h, w, s, self.resize_mode)
        else:
            # The box falls between the reduced image's pixels: PIL resamples fractional boxes.
            box = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
            x = _to_uint8_chw(img.resize((s, s), Image.BILINEAR, box=box))
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(-1)
        # PCA lighting: one RGB offset per image (in [0, 1] units), applied on the device.
        alpha = torch.randn(3, generator=gen, dtype=torch.float64) * self.lighting_std
        return x, pca_lighting_offset(alpha)

    def _val(self, path: str) -> torch.Tensor:
        s = self.input_size
        img = open_image(path)
        if self.resize_mode == "linear":
            # The original resizes the whole full-size decode, then crops.
            return linear_val_crop(decode_rgb(img, path)[0], s)
        box = val_crop_box(img.width, img.height, s)
        short = val_resize_size(s)
        # keep the resized image (shorter side `short`) a downsample of the decoded one
        reduction = (jpeg_reduction(min(img.size), min(img.size), short, short)
                     if self._reduce else 1)
        img, scale = decode_rgb(img, path, reduction)
        # Resizing only the centre box equals resizing the whole image and cropping it
        # (same filter taps, which PIL clips at the image's edges either way), for less work.
        box = tuple(c / scale for c in box)
        return _to_uint8_chw(img.resize((s, s), Image.BILINEAR, box=box))


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

    def __init__(self, loader: DataLoader, dataset: SeededImageFolder, num_classes: int,
                 input_format: str, classes: list[str]):
        self.loader, self.dataset = loader, dataset
        self.num_classes, self.input_format, self.classes = num_classes, input_format, classes
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

    def prepare(self, batch, device: torch.device, channels_last: bool = False):
        if self.dataset.lighting_std == 0:
            batch = batch[:2]  # all-zero offsets: lighting is the identity, skip its passes
        return prepare_batch(batch, device, self.input_format, channels_last)


class ValLoader(_Loader):
    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def relabel(self, mapping: Sequence[int] | None) -> None:
        """Label folder k's images mapping[k] (e.g. a checkpoint's output index of that
        class, matched by name: utils.data.identity.label_map); call before iterating."""
        if mapping is not None:
            self.dataset.samples = [(p, int(mapping[y])) for p, y in self.dataset.samples]


def first_unreadable_image(paths: Sequence[str], threads: int = 8) -> str | None:
    """Open every image's header (PIL, no pixel decoding: cheap); the one-line message of
    the first that cannot be opened, in `paths` order, or None when all open."""
    def check(path: str) -> str | None:
        try:
            with Image.open(path):
                return None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            return str(_bad_image(path, e))

    if len(paths) < 64:
        results = map(check, paths)
        return next((r for r in results if r is not None), None)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for r in pool.map(check, paths, chunksize=64):
            if r is not None:
                return r
    return None


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
                       crop_ratio: tuple[float, float] = CROP_RATIO,
                       reduced_decode: bool = True,
                       resize_mode: str = DEFAULT_RESIZE_MODE) -> TrainLoader:
    """Training loader; `batch_size` is GLOBAL (split evenly over env.world_size ranks).

    `reduced_decode=False` decodes every JPEG at full size (see SeededImageFolder);
    `resize_mode` "antialias" or "linear" (the original's OpenCV resize; full decoding).
    """
    _check_format(input_format)
    resize_mode = _check_resize_mode(resize_mode)
    folder = scan_image_folder(root, what)
    num_classes = _num_classes(folder, classes, what)
    dataset = SeededImageFolder(folder.samples, input_size, train=True, seed=seed,
                                min_scale=min_scale, lighting_std=lighting_std,
                                crop_ratio=crop_ratio, reduced_decode=reduced_decode,
                                resize_mode=resize_mode)
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
                     classes: int | None = None, what: str = "--test_dir",
                     reduced_decode: bool = True,
                     resize_mode: str = DEFAULT_RESIZE_MODE) -> ValLoader:
    """Validation loader over this rank's disjoint shard (no padding, no duplicates).

    `resize_mode`: "antialias" (resize the centre box with antialiased bilinear) or
    "linear" (the original's: OpenCV INTER_LINEAR resize of the whole image, then crop).
    """
    _check_format(input_format)
    resize_mode = _check_resize_mode(resize_mode)
    folder = scan_image_folder(root, what)
    num_classes = _num_classes(folder, classes, what)
    dataset = SeededImageFolder(folder.samples, input_size, train=False,
                                reduced_decode=reduced_decode, resize_mode=resize_mode)
    sampler = ShardSampler(len(dataset), env.rank, env.world_size)
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(dataset, batch_size=batch_size_per_rank, sampler=sampler,
                        num_workers=workers, pin_memory=env.device.type == "cuda",
                        drop_last=False)
    return ValLoader(loader, dataset, num_classes, input_format, list(folder.classes))


# ---- device-side batch preparation -----------------------------------------------------

_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _consts(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(255 as a 0-dim tensor, 1 / (255 std), -mean / std), shape [1, 3, 1, 1], on `device`."""
    key = (device.type, device.index)
    if key not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN, device=device).mul_(255).view(1, 3, 1, 1)
        inv_std = torch.tensor(IMAGENET_STD, device=device).mul_(255).reciprocal_().view(1, 3, 1, 1)
        # A device tensor, not a Python number: CUDA divides by a CPU scalar as a multiply
        # by its reciprocal, which rounds x / 255 differently from numpy for half the values.
        c255 = torch.tensor(255.0, device=device)
        _STATS[key] = (c255, inv_std, (-mean).mul_(inv_std))
    return _STATS[key]


def prepare_batch(batch, device: torch.device, input_format: str = DEFAULT_INPUT_FORMAT,
                  channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels[, lighting]) from a loader -> (float32 input, labels) on device.

    lighting: [b, 3] RGB offsets in [0, 1] units (`pca_lighting_offset`). Each image
    becomes, as in the original's LighteningJitter, the float32 computation
    floor(clip((x / 255 + offset) * 255, 0, 255)) (its uint8 conversion truncates), per
    RGB channel; then bgr255 flips the channels to B, G, R, and rgb normalises with the
    ImageNet mean and std. (The original adds a float64 offset before rounding to
    float32, this a float32 one: the two agreed on all 30M pixels of 200 random draws;
    where they cannot, it is one grey level.)
    """
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
    c255, inv_std, shift = _consts(device)
    if lighting is not None:
        offset = lighting.to(device, torch.float32, non_blocking=non_blocking).view(-1, 3, 1, 1)
        if bgr:
            offset = offset.flip(1)  # the image's channels are B, G, R by now
        x.div_(c255).add_(offset).mul_(255.0).clamp_(0.0, 255.0).floor_()
    if not bgr:
        x.mul_(inv_std).add_(shift)
    return x, labels.to(device, non_blocking=non_blocking)


__all__ = ["INPUT_FORMATS", "DEFAULT_INPUT_FORMAT", "RESIZE_MODES", "DEFAULT_RESIZE_MODE",
           "IMAGENET_MEAN", "IMAGENET_STD", "PCA_EIGVAL", "PCA_EIGVEC", "PCA_EIGVEC_RGB",
           "pca_lighting_offset", "reference_resize_size", "linear_resize", "linear_val_crop",
           "BadImageError", "val_resize_size", "add_data_args",
           "default_workers",
           "random_resized_crop_params", "SeededImageFolder", "FolderIndex", "scan_image_folder",
           "epoch_permutation", "GlobalBatchSampler", "ShardSampler", "TrainLoader",
           "ValLoader", "build_train_loader", "build_val_loader", "prepare_batch",
           "reraise_worker_error", "add_augment_args", "augment_kwargs", "val_crop_box",
           "jpeg_reduction", "open_image", "decode_rgb", "resized_crop"]
