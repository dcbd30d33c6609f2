"""The data pipeline reproduces the original BN-NAS code where it is meant to.

* PCA lighting: the original's LighteningJitter (its eigenvector matrix with the rows
  reversed, applied to RGB; float32 x / 255 + offset, times 255, clipped to 0-255 and
  truncated to uint8), written out here in numpy, equals `prepare_batch`'s output in both
  input formats for fixed images and draws.
* `--resize-mode linear`: the original's validation transform (OpencvResize: the whole
  image, shorter side 256, cv2.INTER_LINEAR; then CenterCrop(224)) and its training crop
  resize, here as a numpy bilinear interpolation at half-pixel centres without
  antialiasing, match within one grey level (OpenCV itself uses 11-bit fixed-point
  weights), and differ from the antialiased default.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from utils.cli.common import UserError
from utils.data.folder import SeededImageFolder
from utils.data.loaders import (add_augment_args, add_data_args, augment_kwargs,
                                build_train_loader, build_val_loader, prepare_batch)
from utils.data.transforms import (CROP_RATIO, DEFAULT_RESIZE_MODE, PCA_EIGVAL, PCA_EIGVEC,
                                   PCA_EIGVEC_RGB, jpeg_reduction, linear_resize,
                                   pca_lighting_offset, random_resized_crop_params,
                                   reference_resize_size, sample_seed as _sample_seed,
                                   val_resize_size)
from utils.dist import DistEnv

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _rng(keep_global_rng):
    """Every test here leaves torch's global RNG as found."""


# ---- the original's formulas, in numpy ---------------------------------------------------

# utils/imagenet.py of the original release: the matrix as it stores it (rows B, G, R) and
# the eigenvalues; get_train_dataloader passes `eigvec[::-1, :]` to LighteningJitter.
ORIGINAL_EIGVEC = np.array([[-0.5836, -0.6948, 0.4203],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5675, 0.7192, 0.4009]])
ORIGINAL_EIGVAL = np.array([0.2175, 0.0188, 0.0045])


def original_lighting(rgb: np.ndarray, jitter) -> np.ndarray:
    """LighteningJitter(eigvec[::-1, :], eigval) on an RGB uint8 [H, W, 3] image, with its
    np.random.normal(scale=std, size=3) draw replaced by `jitter`: float32 constants,
    img / 255 in float32, the float64 perturbation added in place, * 255, clip, uint8."""
    vecs = np.array(ORIGINAL_EIGVEC[::-1, :], dtype=np.float32)
    vals = np.array(ORIGINAL_EIGVAL, dtype=np.float32)
    img = np.asarray(rgb, dtype=np.float32)
    img = np.ascontiguousarray(img / 255)
    purb = (vecs @ (vals * np.asarray(jitter, dtype=np.float64))).reshape([1, 1, -1])
    img += purb
    img = np.ascontiguousarray(img * 255)
    img.clip(0, 255, out=img)
    return np.uint8(img)


def original_resize_size(width: int, height: int, size: int = 256) -> tuple[int, int]:
    """OpencvResize's cv2 dsize (width, height)."""
    H, W = height, width
    return (int(size / H * W + 0.5), size) if H < W else (size, int(size / W * H + 0.5))


def _taps(n_in: int, n_out: int):
    # cv2.INTER_LINEAR: source = (dst + 0.5) * in / out - 0.5; below 0 -> pixel 0, at or
    # beyond the last pixel -> the last pixel; else the two neighbours, linearly weighted.
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    last = lo >= n_in - 1
    lo = np.minimum(lo, n_in - 1)
    frac[last] = 0.0
    return lo, np.minimum(lo + 1, n_in - 1), frac


def bilinear_resize(hwc: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """cv2.resize(hwc, (out_w, out_h), interpolation=cv2.INTER_LINEAR) in float64,
    rounded half up: no antialiasing, whatever the scale."""
    f = hwc.astype(np.float64)
    y0, y1, fy = _taps(f.shape[0], out_h)
    f = f[y0] * (1 - fy)[:, None, None] + f[y1] * fy[:, None, None]
    x0, x1, fx = _taps(f.shape[1], out_w)
    f = f[:, x0] * (1 - fx)[None, :, None] + f[:, x1] * fx[None, :, None]
    return np.floor(f + 0.5).clip(0, 255).astype(np.uint8)


def original_val(rgb: np.ndarray, crop: int = 224) -> np.ndarray:
    """OpencvResize(256) then torchvision CenterCrop(crop): uint8 [crop, crop, 3]."""
    h, w = rgb.shape[:2]
    nw, nh = original_resize_size(w, h, val_resize_size(crop))
    big = bilinear_resize(rgb, nw, nh)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    return big[top:top + crop, left:left + crop]


def _chw(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max())


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.int() - b.int()).abs().float().mean())


# ---- PCA lighting -------------------------------------------------------------------------

def _every_level_image() -> np.ndarray:
    """RGB uint8 [16, 16, 3]: every grey level 0-255 once per channel, in a different
    order per channel, so the levels next to 0 and 255 (where clipping acts) are in."""
    rng = np.random.default_rng(3)
    return np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)], -1).astype(np.uint8)


# Lighting coefficients: realistic draws (std 0.1) where truncation decides, and strong
# ones whose offsets reach +-10 grey levels, with the second eigenvector's opposite signs
# on R and B (channel order matters) and clipping at both ends.
JITTERS = [(0.1, -0.08, 0.15), (-0.04, 0.2, -0.11), (0.2, 1.5, -1.0), (-0.2, -1.5, 1.0),
           (0.0, 0.0, 0.0)]


def test_lighting_offset_is_the_originals_rgb_perturbation():
    assert PCA_EIGVEC_RGB == tuple(reversed(PCA_EIGVEC))  # rows R, G, B
    np.testing.assert_array_equal(np.array(PCA_EIGVEC), ORIGINAL_EIGVEC)  # kept as stored
    np.testing.assert_array_equal(np.array(PCA_EIGVAL), ORIGINAL_EIGVAL)
    # The second eigenvector brightens red where it darkens blue: R gets +0.7192.
    r, g, b = pca_lighting_offset([0.0, 1.0, 0.0]).tolist()
    assert r == pytest.approx(0.0188 * 0.7192, rel=1e-6)
    assert b == pytest.approx(0.0188 * -0.6948, rel=1e-6)
    assert g == pytest.approx(0.0188 * -0.0045, rel=1e-5)
    for jitter in JITTERS:
        vecs = np.array(ORIGINAL_EIGVEC[::-1, :], dtype=np.float32)
        vals = np.array(ORIGINAL_EIGVAL, dtype=np.float32)
        purb = vecs @ (vals * np.array(jitter))
        off = pca_lighting_offset(torch.tensor(jitter, dtype=torch.float64))
        assert off.dtype == torch.float32
        assert torch.equal(off, torch.from_numpy(purb.astype(np.float32)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_lighting_equals_the_originals_in_both_input_formats(channels_last):
    rgb = _every_level_image()
    images = torch.stack([_chw(rgb)] * len(JITTERS))
    light = torch.stack([pca_lighting_offset(torch.tensor(j, dtype=torch.float64))
                         for j in JITTERS])
    want = np.stack([original_lighting(rgb, j) for j in JITTERS])  # [n, H, W, 3] RGB
    # The data tell the formula apart from near misses: the BGR-ordered matrix applied to
    # RGB, no clipping, rounding instead of truncation.
    unlit = rgb.astype(np.float32)[None] / 255
    vecs = np.array(ORIGINAL_EIGVEC, dtype=np.float32)
    vals = np.array(ORIGINAL_EIGVAL, dtype=np.float32)
    purb = np.stack([vecs @ (vals * np.array(j)) for j in JITTERS])[:, None, None]  # B, G, R
    for order, fix in (([0, 1, 2], lambda v: np.floor(np.clip(v, 0, 255))),  # BGR matrix
                       ([2, 1, 0], lambda v: np.floor(v)),                   # no clip
                       ([2, 1, 0], lambda v: np.round(np.clip(v, 0, 255)))):  # rounding
        near = fix((unlit + purb[..., order]) * 255)
        assert not np.array_equal(near, want)
    assert (want == 255).any() and (want == 0).any()
    labels = torch.arange(len(JITTERS))

    # bgr255: the original fed ToBGRTensor(lit image): BGR channels, float 0-255.
    x, y = prepare_batch((images, labels, light), CPU, "bgr255", channels_last)
    assert torch.equal(y, labels) and x.dtype == torch.float32
    ref = torch.from_numpy(np.ascontiguousarray(want[..., ::-1].transpose(0, 3, 1, 2))).float()
    assert torch.equal(x, ref)
    # rgb: the same lit image, normalised as any unlit one
    x, _ = prepare_batch((images, labels, light), CPU, "rgb", channels_last)
    lit = torch.from_numpy(np.ascontiguousarray(want.transpose(0, 3, 1, 2)))
    ref, _ = prepare_batch((lit, labels), CPU, "rgb", channels_last)
    assert torch.equal(x, ref)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    # a zero draw changes nothing: (x / 255) * 255 is exact for every level
    assert torch.equal(lit[-1], images[-1])


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory) -> str:
    """RGB noise, 1025 x 512 (lossless): aliasing shows, and the resize rules differ."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("noise_set") / "a"  # an ImageFolder of one image
    folder.mkdir()
    path = str(folder / "noise_1025x512.png")
    Image.fromarray(rng.integers(0, 256, (512, 1025, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> str:
    """A smooth-ish 1100 x 1300 JPEG: decoded at 1/4 scale in antialias mode."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (65, 55, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((1100, 1300), Image.BICUBIC)
    path = str(tmp_path_factory.mktemp("fidelity") / "big.jpg")
    img.save(path, quality=90)
    return path


def test_training_samples_draw_lighting_that_matches_the_original(noise_png):
    """The dataset's offsets come from its per-sample draws, and the device output of its
    crop equals the original's lighting of that crop."""
    ds = SeededImageFolder([(noise_png, 0)] * 4, 32, train=True, seed=11)
    for index, epoch in ((0, 0), (3, 0), (1, 2)):
        gen = torch.Generator().manual_seed(_sample_seed(11, epoch, index))
        random_resized_crop_params(1025, 512, gen, (0.08, 1.0), CROP_RATIO)
        torch.rand(1, generator=gen)  # the flip
        alpha = torch.randn(3, generator=gen, dtype=torch.float64) * 0.1
        x, label, light = ds[(index, epoch)]
        assert torch.equal(light, pca_lighting_offset(alpha))
        out, _ = prepare_batch((x[None], torch.tensor([label]), light[None]), CPU, "bgr255")
        want = original_lighting(x.permute(1, 2, 0).numpy(), alpha.numpy())
        assert torch.equal(out[0], _chw(want[..., ::-1].copy()).float())


def test_lighting_flag_std_and_zero_disables(tiny_data):
    p = argparse.ArgumentParser()
    add_data_args(p)
    add_augment_args(p)
    kw = augment_kwargs(p.parse_args([]))
    assert kw["lighting_std"] == 0.1 and kw["resize_mode"] == DEFAULT_RESIZE_MODE == "antialias"
    assert augment_kwargs(p.parse_args(["--lighting", "0.25"]))["lighting_std"] == 0.25
    kw = augment_kwargs(p.parse_args(["--lighting", "0", "--resize_mode", "linear"]))
    assert kw["lighting_std"] == 0.0 and kw["resize_mode"] == "linear"
    with pytest.raises(UserError, match="--lighting must be >= 0"):
        augment_kwargs(argparse.Namespace(**{**vars(p.parse_args([])), "lighting": -0.1}))
    with pytest.raises(SystemExit):  # the flag itself is refused while parsing
        p.parse_args(["--lighting", "-0.1"])
    with pytest.raises(SystemExit):
        p.parse_args(["--resize-mode", "cubic"])

    loader = build_train_loader(os.path.join(tiny_data, "train"), 24, 4, DistEnv(), 0, 3,
                                **kw)
    loader.set_epoch(0)
    batch = next(iter(loader))
    assert not batch[2].any()  # zero offsets ...
    x, _ = loader.prepare(batch, CPU)
    assert torch.equal(x, prepare_batch(batch[:2], CPU)[0])  # ... and no change


# ---- linear (OpenCV INTER_LINEAR) resize --------------------------------------------------

def test_resize_size_rule_is_the_originals_for_odd_shapes():
    shapes = [(500, 375), (375, 500), (300, 300), (1025, 512), (512, 1025), (1539, 1536),
              (1536, 1539), (257, 256), (333, 999), (4000, 3), (3, 4000), (641, 427),
              (257, 513)]
    for w, h in shapes:
        assert reference_resize_size(w, h, 256) == original_resize_size(w, h, 256), (w, h)
    rng = np.random.default_rng(0)
    for w, h in rng.integers(10, 5000, (2000, 2)).tolist():
        assert reference_resize_size(w, h, 256) == original_resize_size(w, h, 256), (w, h)
    # where the antialias mode's rule (round half to even of w * 256 / h) differs
    assert original_resize_size(1025, 512) == (513, 256) and round(1025 * 256 / 512) == 512


def test_linear_resize_is_unfiltered_bilinear():
    rng = np.random.default_rng(5)
    hwc = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for out_h, out_w in ((11, 17), (37, 53), (80, 41), (19, 26)):
        got = linear_resize(_chw(hwc), out_h, out_w)
        assert got.dtype == torch.uint8 and got.shape == (3, out_h, out_w)
        assert got.is_contiguous()
        assert _max_abs(got, _chw(bilinear_resize(hwc, out_w, out_h))) <= 1


def test_linear_validation_is_the_originals_opencv_resize_and_centre_crop(noise_png):
    rgb = np.asarray(Image.open(noise_png).convert("RGB"))
    want = _chw(original_val(rgb))
    linear = SeededImageFolder([(noise_png, 0)], 224, train=False, resize_mode="linear")[0][0]
    assert linear.shape == (3, 224, 224) and linear.dtype == torch.uint8
    assert linear.is_contiguous()
    assert _max_abs(linear, want) <= 1 and _mean_abs(linear, want) < 0.01
    default = SeededImageFolder([(noise_png, 0)], 224, train=False)[0][0]
    assert _mean_abs(default, want) > 10  # antialiasing smooths the noise: not the original

    # through the loader, the flag's value reaches the dataset
    root = os.path.dirname(os.path.dirname(noise_png))
    loader = build_val_loader(root, 224, 1, DistEnv(), 0, resize_mode="linear",
                              what="noise set")
    assert loader.resize_mode == "linear"
    assert torch.equal(next(iter(loader))[0][0], linear)
    with pytest.raises(UserError, match="unknown resize mode"):
        build_val_loader(root, 224, 1, DistEnv(), 0, resize_mode="cubic", what="noise set")


def test_linear_mode_resizes_the_full_decode(big_jpeg):
    """Linear mode never uses the reduced JPEG decode: the original resizes the full image."""
    rgb = np.asarray(Image.open(big_jpeg).convert("RGB"))
    assert jpeg_reduction(1100, 1100, 256, 256) == 4  # what antialias mode would do
    val = [SeededImageFolder([(big_jpeg, 0)], 224, train=False, resize_mode="linear",
                             reduced_decode=r)[0][0] for r in (True, False)]
    assert torch.equal(val[0], val[1])
    assert _max_abs(val[0], _chw(original_val(rgb))) <= 1

    s = 64
    ds = SeededImageFolder([(big_jpeg, 0)] * 3, s, train=True, seed=2, resize_mode="linear")
    full = SeededImageFolder([(big_jpeg, 0)] * 3, s, train=True, seed=2,
                             resize_mode="linear", reduced_decode=False)
    aa = SeededImageFolder([(big_jpeg, 0)] * 3, s, train=True, seed=2)
    for index, epoch in ((0, 0), (2, 1)):
        gen = torch.Generator().manual_seed(_sample_seed(2, epoch, index))
        top, left, h, w = random_resized_crop_params(1100, 1300, gen, (0.08, 1.0), CROP_RATIO)
        flip = torch.rand(1, generator=gen).item() < 0.5
        assert jpeg_reduction(w, h, s, s) > 1  # antialias mode decodes this crop reduced
        want = bilinear_resize(rgb[top:top + h, left:left + w], s, s)
        want = _chw(want[:, ::-1].copy() if flip else want)
        x, _, light = ds[(index, epoch)]
        assert torch.equal(x, full[(index, epoch)][0])
        assert _max_abs(x, want) <= 1
        assert torch.equal(light, aa[(index, epoch)][2])  # same draws as the default
        assert _mean_abs(aa[(index, epoch)][0], want) > 0.5


# ---- --eval of the original's checkpoints -------------------------------------------------

def _retrain_script():
    spec = importlib.util.spec_from_file_location(
        "retrain_train_from_scratch_fidelity", os.path.join(ROOT, "retrain/train_from_scratch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_of_an_original_checkpoint_defaults_to_its_resize():
    from utils.checkpoints.subnet import SubnetCheckpoint
    script = _retrain_script()
    reference = SubnetCheckpoint("ref.pth.tar", "reference", {})
    ours_old = SubnetCheckpoint("old.pth.tar", "subnet", {}, raw=dict(args={}))
    ours_linear = SubnetCheckpoint("lin.pth.tar", "subnet", {},
                                   raw=dict(args=dict(resize_mode="linear",
                                                      input_format="bgr255")))
    base = ["--eval", "--eval-resume", "x.pth.tar", "--test_dir", "val"]

    def settings(extra, loaded):
        from utils.train.retrain_eval import eval_data_settings
        return eval_data_settings(script.parse_args(base + extra), loaded)

    fmt, mode, note = settings([], reference)
    assert (fmt, mode) == ("bgr255", "linear") and "original" in note
    assert settings(["--resize-mode", "antialias"], reference)[1:] == ("antialias",
                                                                        "--resize-mode")
    assert settings(["--input-format", "rgb"], reference)[:2] == ("rgb", "linear")
    assert settings([], ours_old)[:2] == ("rgb", "antialias")
    assert settings([], ours_linear) == ("bgr255", "linear", "the checkpoint's")
    assert settings(["--resize_mode", "antialias"], ours_linear)[1] == "antialias"


def test_resuming_a_retrain_with_another_resize_mode_is_refused():
    from utils.spaces import get_space, make_config
    script = _retrain_script()
    cfg = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)
    arch = get_space(cfg).random_arch(np.random.default_rng(0))
    run = dict(seed=0, batch_size=16, total_iters=6, steps_per_epoch=3)
    from dataclasses import replace
    from utils.train.config import RetrainConfig
    from utils.train.retrain_run import check_resume
    args = script.parse_args(["--train_dir", "t", "--test_dir", "v"])

    def state(**saved):
        return dict(kind="subnet", config=cfg.to_dict(), arch=list(arch),
                    args=dict(decay_params="conv", **saved), **run)

    def now(resize_mode):  # this run's settings, resolved
        return replace(RetrainConfig.from_args(args), input_format="rgb",
                       resize_mode=resize_mode, **run)

    # a checkpoint from before the flag: made with the antialiased resize
    check_resume(state(), "c.pth.tar", cfg, arch, now("antialias"))
    with pytest.raises(UserError, match="resize_mode: antialias vs linear"):
        check_resume(state(), "c.pth.tar", cfg, arch, now("linear"))
    check_resume(state(resize_mode="linear"), "c.pth.tar", cfg, arch, now("linear"))
