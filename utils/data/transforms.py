"""How one image becomes a network input: constants, crops, resizes, lighting, seeding.

* Training augmentation (docs/method.md): random resized crop (area 0.08-1, aspect
  3/4-4/3 as torchvision), horizontal flip, PCA lighting noise (std 0.1). Its randomness
  depends only on (seed, epoch, sample index) (`sample_seed`): every sample gets its own
  torch.Generator, so a run resumed mid-epoch sees exactly the images an uninterrupted
  run would, whatever the worker count. Lighting is a per-image RGB offset, so the worker
  only draws it and the device applies it (utils.data.loaders.prepare_batch), with the
  original's arithmetic: uint8(clip((x / 255 + offset) * 255, 0, 255)) in float32.
* Resize modes (`resize_mode`, the --resize-mode flag): "antialias" (default) resizes with
  antialiased bilinear filtering (PIL's BILINEAR, what torchvision does on PIL images);
  "linear" reproduces the original's OpenCV cv2.INTER_LINEAR (bilinear interpolation at
  half-pixel centres, no antialiasing) and, for validation, its OpencvResize of the
  whole image (shorter side 256, the other int(256 / short * long + 0.5)) then a centre
  crop. It runs on torch (float bilinear, rounded half up); OpenCV's 11-bit fixed-point
  weights can differ from it by one grey level.
* `SeededImages`: the seeded train / validation pipeline over (key, label) samples. Its
  subclasses only say how a sample's image is opened and decoded: files
  (utils.data.folder.SeededImageFolder) or in-memory arrays (utils.data.arrays.ArrayImages),
  so every dataset gets the same augmentation and the same per-sample seeding.

Public API: INPUT_FORMATS, DEFAULT_INPUT_FORMAT, RESIZE_MODES, DEFAULT_RESIZE_MODE,
IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC (BGR rows, as the original stores it),
PCA_EIGVEC_RGB (its rows reversed: the matrix applied), CROP_RATIO, VAL_CROP_FRACTION,
VAL_CROP_RANGE, check_crop_pct, pca_lighting_offset, val_resize_size, recorded_crop_pct,
reference_resize_size, linear_resize, linear_val_crop, resized_crop,
random_resized_crop_params, val_crop_box, jpeg_reduction, sample_seed, check_resize_mode,
to_uint8_chw, SeededImages.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import UserError

INPUT_FORMATS = ("rgb", "bgr255")
# rgb: RGB normalised with the dataset's mean/std (ImageNet's for imagefolder, the
# torchvision convention; the default); bgr255: the reference's BGR channels in 0-255
# without normalisation.
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
VAL_CROP_FRACTION = 0.875  # the ImageNet convention (and the original's): 224 of 256
VAL_CROP_RANGE = (0.1, 1.0)  # --val-crop-pct: 1.0 keeps the whole (centred) image


def check_crop_pct(crop_pct: float) -> float:
    crop_pct = float(crop_pct)
    lo, hi = VAL_CROP_RANGE
    if not (lo <= crop_pct <= hi):  # also refuses NaN
        raise ValueError(f"val crop fraction must be in [{lo}, {hi}], got {crop_pct}")
    return crop_pct


def val_resize_size(input_size: int, crop_pct: float = VAL_CROP_FRACTION) -> int:
    """Shorter side before the centre crop: 256 for 224 at the default 0.875; the input
    size itself at 1.0 (small centred images such as Fashion-MNIST lose nothing)."""
    return int(round(input_size / check_crop_pct(crop_pct)))


def recorded_crop_pct(saved_args: dict | None) -> float:
    """The validation crop fraction a checkpoint's saved args record (`val_crop_pct`);
    checkpoints from before --val-crop-pct validated at VAL_CROP_FRACTION."""
    value = (saved_args or {}).get("val_crop_pct")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return VAL_CROP_FRACTION
    lo, hi = VAL_CROP_RANGE
    return float(value) if lo <= value <= hi else VAL_CROP_FRACTION


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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample `index`'s generator in `epoch` (its crop, flip and lighting)."""
    # SeedSequence mixes the three integers well; 63 bits fit manual_seed.
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def check_resize_mode(mode: str | None) -> str:
    mode = mode or DEFAULT_RESIZE_MODE
    if mode not in RESIZE_MODES:
        raise UserError(f"unknown resize mode '{mode}' (choose from {', '.join(RESIZE_MODES)})")
    return mode


def jpeg_reduction(region_w: float, region_h: float, out_w: int, out_h: int) -> int:
    """Largest JPEG DCT scale-down (8, 4, 2, else 1) that keeps a `region_w` x `region_h`
    region at least `out_w` x `out_h` pixels: the region is then still downsampled to the
    output, never upsampled, so the output loses no detail it could show."""
    for factor in (8, 4, 2):
        if region_w >= out_w * factor and region_h >= out_h * factor:
            return factor
    return 1


# ---- pixels out of PIL --------------------------------------------------------------

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


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W] tensor of an RGB image."""
    return _chw_tensor(_hwc(img))


# ---- resizing -----------------------------------------------------------------------

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


def linear_val_crop(img: Image.Image, input_size: int,
                    crop_pct: float = VAL_CROP_FRACTION) -> torch.Tensor:
    """uint8 [3, s, s]: the original's validation transform of a full-size RGB image:
    OpencvResize (the whole image, shorter side `val_resize_size(s)`, sizes by
    `reference_resize_size`, cv2.INTER_LINEAR) then torchvision's CenterCrop(s)."""
    s = input_size
    nw, nh = reference_resize_size(img.width, img.height, val_resize_size(s, crop_pct))
    y = _linear_resize_float(_tensor_view(_hwc(img)).permute(2, 0, 1), nh, nw)
    # CenterCrop's offsets: int(round((size - crop) / 2)), Python's half-to-even round.
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    return _round_to_uint8(y[:, top:top + s, left:left + s])


# ---- crop boxes ---------------------------------------------------------------------

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


def val_crop_box(width: int, height: int, input_size: int,
                 crop_pct: float = VAL_CROP_FRACTION) -> tuple[float, float, float, float]:
    """Full-size (left, top, right, bottom) box that becomes the validation input: the
    centre `input_size` square after resizing the shorter side to `val_resize_size`."""
    short = val_resize_size(input_size, crop_pct)
    if width <= height:
        nw, nh = short, int(round(height * short / width))
    else:
        nw, nh = int(round(width * short / height)), short
    left, top = int(round((nw - input_size) / 2.0)), int(round((nh - input_size) / 2.0))
    sx, sy = width / nw, height / nh
    return left * sx, top * sy, (left + input_size) * sx, (top + input_size) * sy


# ---- the seeded pipeline ------------------------------------------------------------

class SeededImages(Dataset):
    """(key, label) samples through the training or validation pipeline, seeded per sample.

    Training items are addressed by (index, epoch) tuples, which GlobalBatchSampler
    yields; plain integer indices (epoch 0) also work. Training items are (uint8 [3, s, s],
    label, float32 [3] lighting offset); validation items (uint8 [3, s, s], label), from a
    deterministic resize + centre crop.

    Subclasses say where pixels come from: `open(key)` (a PIL image whose size is known;
    its pixels may still be undecoded), `decode(img, key, reduction)` -> (RGB image,
    scale: full-size coordinates / scale = its coordinates), `sample_names(root)` (one
    identity string per sample, for utils.data.identity fingerprints) and optionally
    `first_unreadable(rank, world)`. `reduce`: whether `decode` may get a reduction > 1
    (a JPEG decoded at 1/2-1/8 scale); linear resize mode never asks for one.
    `classes`: the class names (label i = classes[i]), when the builder knows them.
    """

    def __init__(self, samples: Sequence[tuple[object, int]], input_size: int, train: bool,
                 seed: int = 0, min_scale: float = 0.08, lighting_std: float = 0.1,
                 crop_ratio: tuple[float, float] = CROP_RATIO, reduced_decode: bool = True,
                 resize_mode: str = DEFAULT_RESIZE_MODE, classes: Sequence[str] | None = None,
                 crop_pct: float = VAL_CROP_FRACTION):
        self.resize_mode = check_resize_mode(resize_mode)
        self.crop_pct = check_crop_pct(crop_pct)  # validation: centre crop fraction
        self.samples = list(samples)
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.input_size = int(input_size)
        self.train = train
        self.seed = int(seed)
        self.min_scale = float(min_scale)
        self.lighting_std = float(lighting_std)
        self.reduced_decode = bool(reduced_decode)
        self._reduce = self.reduced_decode and self.resize_mode == "antialias"
        self.classes = list(classes) if classes is not None else None

    # -- what subclasses provide
    def open(self, key) -> Image.Image:
        raise NotImplementedError

    def decode(self, img: Image.Image, key, reduction: int = 1) -> tuple[Image.Image, float]:
        raise NotImplementedError

    def sample_names(self, root: str) -> list[str]:
        raise NotImplementedError

    def first_unreadable(self, rank: int = 0, world: int = 1) -> str | None:
        """The one-line message of this rank's first unreadable sample, else None."""
        return None

    # -- the pipeline
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (int(item), 0)
        key, label = self.samples[index]
        if not self.train:
            return self._val(key), label
        gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        x, lighting = self._train(key, gen)
        return x, label, lighting

    def crop_box(self, index: int, epoch: int = 0) -> tuple[int, int, int, int]:
        """Full-size (top, left, h, w) of training sample `index`'s crop in `epoch`."""
        key = self.samples[index][0]
        gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        img = self.open(key)
        return random_resized_crop_params(img.width, img.height, gen, (self.min_scale, 1.0),
                                          self.crop_ratio)

    def _train(self, key, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.input_size
        img = self.open(key)
        # The box is drawn on the full-size dimensions, so it does not depend on how the
        # pixels are decoded.
        top, left, h, w = random_resized_crop_params(img.width, img.height, gen,
                                                     (self.min_scale, 1.0), self.crop_ratio)
        reduction = jpeg_reduction(w, h, s, s) if self._reduce else 1
        img, scale = self.decode(img, key, reduction)
        if scale == 1.0:
            x = resized_crop(img, top, left, h, w, s, self.resize_mode)
        else:
            # The box falls between the reduced image's pixels: PIL resamples fractional boxes.
            box = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
            x = to_uint8_chw(img.resize((s, s), Image.BILINEAR, box=box))
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(-1)
        # PCA lighting: one RGB offset per image (in [0, 1] units), applied on the device.
        alpha = torch.randn(3, generator=gen, dtype=torch.float64) * self.lighting_std
        return x, pca_lighting_offset(alpha)

    def _val(self, key) -> torch.Tensor:
        s = self.input_size
        img = self.open(key)
        if self.resize_mode == "linear":
            # The original resizes the whole full-size decode, then crops.
            return linear_val_crop(self.decode(img, key)[0], s, self.crop_pct)
        box = val_crop_box(img.width, img.height, s, self.crop_pct)
        short = val_resize_size(s, self.crop_pct)
        # keep the resized image (shorter side `short`) a downsample of the decoded one
        reduction = (jpeg_reduction(min(img.size), min(img.size), short, short)
                     if self._reduce else 1)
        img, scale = self.decode(img, key, reduction)
        # Resizing only the centre box equals resizing the whole image and cropping it
        # (same filter taps, which PIL clips at the image's edges either way), for less work.
        box = tuple(c / scale for c in box)
        return to_uint8_chw(img.resize((s, s), Image.BILINEAR, box=box))
