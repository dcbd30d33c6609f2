"""The data loader's fast paths keep the augmentation: same crop boxes, same geometry,
nearly the same pixels; and its workers never keep a script from exiting."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_env
from utils.data.folder import SeededImageFolder, decode_rgb
from utils.data.loaders import build_train_loader, prepare_batch
from utils.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, jpeg_reduction,
                                   random_resized_crop_params, sample_seed as _sample_seed,
                                   val_resize_size)
from utils.dist import DistEnv


@pytest.fixture(autouse=True)
def _rng(keep_global_rng):
    """Every test here leaves torch's global RNG as found."""


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[tuple[int, int], str]:
    """Real photographs (matplotlib's sample photo, a requirement) as quality-90 JPEGs."""
    mpl = os.path.dirname(importlib.util.find_spec("matplotlib").origin)
    src = Image.open(os.path.join(mpl, "mpl-data", "sample_data", "grace_hopper.jpg"))
    src = src.convert("RGB")
    out = tmp_path_factory.mktemp("photos")
    paths = {}
    for w, h in ((640, 480), (375, 500)):
        # the largest centred crop at the target aspect, resized: a full-frame photo
        cw = min(src.width, src.height * w / h)
        ch = cw * h / w
        box = ((src.width - cw) / 2, (src.height - ch) / 2, (src.width + cw) / 2,
               (src.height + ch) / 2)
        path = str(out / f"photo_{w}x{h}.jpg")
        src.resize((w, h), Image.LANCZOS, box=box).save(path, quality=90)
        paths[(w, h)] = path
    return paths


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.int() - b.int()).abs().float().mean().item()


def test_crop_boxes_are_those_of_the_previous_loader(photos):
    # (top, left, h, w) drawn by the full-decode loader before the fast paths: the same
    # seed still gives the same boxes, so resumed and older runs see the same crops.
    want = {(640, 480): {(0, 0): (85, 113, 385, 296), (0, 5): (131, 76, 196, 238),
                         (3, 0): (39, 206, 411, 355), (3, 5): (7, 129, 470, 411)},
            (375, 500): {(0, 0): (178, 47, 301, 232), (0, 5): (81, 3, 411, 369),
                         (3, 0): (101, 71, 321, 277), (3, 5): (94, 31, 367, 321)}}
    for size, boxes in want.items():
        ds = SeededImageFolder([(photos[size], 0)] * 6, 224, train=True, seed=7)
        for (epoch, index), box in boxes.items():
            assert ds.crop_box(index, epoch) == box


def test_training_crop_is_pils_crop_and_resize_within_one_level(photos):
    """Full-size decode path: torch's uint8 kernel reproduces PIL's crop().resize(BILINEAR)
    (torchvision's RandomResizedCrop), flips included."""
    path = photos[(640, 480)]
    ds = SeededImageFolder([(path, 0)] * 6, 224, train=True, seed=7)
    full = Image.open(path).convert("RGB")
    for epoch, index in ((0, 0), (0, 5), (3, 0), (3, 5)):
        gen = torch.Generator().manual_seed(_sample_seed(7, epoch, index))
        top, left, h, w = random_resized_crop_params(640, 480, gen)
        assert jpeg_reduction(w, h, 224, 224) == 1  # this path, not the reduced decode
        flip = torch.rand(1, generator=gen).item() < 0.5
        ref = full.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
        if flip:
            ref = ref.flip(-1)
        x, label, lighting = ds[(index, epoch)]
        assert x.dtype == torch.uint8 and x.shape == (3, 224, 224) and x.is_contiguous()
        assert (x.int() - ref.int()).abs().max().item() <= 1


def test_jpeg_reduction_keeps_the_crop_at_least_the_input_size():
    assert jpeg_reduction(447, 900, 224, 224) == 1
    assert jpeg_reduction(448, 448, 224, 224) == 2
    assert jpeg_reduction(900, 460, 224, 224) == 2
    assert jpeg_reduction(896, 896, 224, 224) == 4
    assert jpeg_reduction(1792, 2000, 224, 224) == 8
    assert jpeg_reduction(9000, 9000, 224, 224) == 8  # libjpeg scales down by 8 at most


def test_reduced_decode_gives_the_same_crops_at_the_right_size(photos):
    path = photos[(640, 480)]
    img = Image.open(path)
    small, scale = decode_rgb(img, path, 4)
    assert small.size == (160, 120) and scale == 4.0 and small.mode == "RGB"
    png = path.replace(".jpg", ".png")
    Image.open(path).save(png)
    assert decode_rgb(Image.open(png), png, 4)[0].size == (640, 480)  # JPEG only

    s = 64  # crops of >= 128 px decode at 1/2, >= 256 px at 1/4
    samples = [(path, 0)] * 6
    fast = SeededImageFolder(samples, s, train=True, seed=7)
    full = SeededImageFolder(samples, s, train=True, seed=7, reduced_decode=False)
    reductions = []
    for epoch, index in ((0, 0), (0, 5), (3, 0), (3, 5)):
        top, left, h, w = fast.crop_box(index, epoch)
        reductions.append(jpeg_reduction(w, h, s, s))
        a, b = fast[(index, epoch)], full[(index, epoch)]
        assert a[0].shape == b[0].shape == (3, s, s)
        assert torch.equal(a[2], b[2]) and a[1] == b[1]  # lighting and label untouched
        # same box and flip; libjpeg's scaled IDCT replaces part of the bilinear filtering
        assert _mean_abs(a[0], b[0]) < 2.5
    assert sorted(set(reductions)) == [2, 4]

    val_fast = SeededImageFolder(samples[:1], s, train=False)
    val_full = SeededImageFolder(samples[:1], s, train=False, reduced_decode=False)
    a, b = val_fast[0][0], val_full[0][0]
    assert a.shape == b.shape == (3, s, s) and _mean_abs(a, b) < 2.5


def test_validation_is_resize_then_centre_crop(photos):
    for size, path in photos.items():
        ds = SeededImageFolder([(path, 0)], 224, train=False, reduced_decode=False)
        img = Image.open(path).convert("RGB")
        short = val_resize_size(224)
        w, h = img.size
        nw, nh = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
        left, top = round((nw - 224) / 2), round((nh - 224) / 2)
        ref = img.resize((nw, nh), Image.BILINEAR).crop((left, top, left + 224, top + 224))
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
        x = ds[0][0]
        assert x.shape == (3, 224, 224)
        assert (x.int() - ref.int()).abs().max().item() <= 1


def test_prepare_applies_lighting_then_normalisation():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 3, 5, 4), dtype=torch.uint8, generator=g)
    light = torch.randn(3, 3, generator=g) * 0.1
    y = torch.tensor([0, 1, 2])
    # lit = floor(clip((x / 255 + offset) * 255)) (tests/unit/test_data_fidelity.py checks it
    # against the original's numpy code exactly)
    ref = ((img.float() / 255 + light.view(3, 3, 1, 1)) * 255).clamp(0, 255).floor()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    x, labels = prepare_batch((img, y, light), torch.device("cpu"), "rgb", channels_last=True)
    assert torch.allclose(x, (ref - mean) / std, atol=1e-5) and torch.equal(labels, y)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    x, _ = prepare_batch((img, y), torch.device("cpu"), "rgb")
    assert torch.allclose(x, (img.float() - mean) / std, atol=1e-5) and x.is_contiguous()
    x, _ = prepare_batch((img, y, light), torch.device("cpu"), "bgr255")
    assert torch.equal(x, ref.flip(1))
    assert torch.equal(img, img.clone())  # the loader's batch is not modified


def test_close_stops_the_workers_and_a_new_iteration_starts_afresh(tiny_data):
    loader = build_train_loader(os.path.join(tiny_data, "train"), 32, 4, DistEnv(), 1, 3)
    loader.set_epoch(2)
    it = iter(loader)
    first = [next(it)[0] for _ in range(2)]
    workers = list(loader.loader._iterator._workers)
    assert workers and all(w.is_alive() for w in workers)
    loader.close()
    assert not any(w.is_alive() for w in workers)
    assert list(it) == []  # the closed iteration ends instead of waiting on dead workers
    with loader:
        loader.set_epoch(2)
        again = [b[0] for _, b in zip(range(2), loader)]
        workers = list(loader.loader._iterator._workers)
    assert not any(w.is_alive() for w in workers)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_script_exits_after_a_partial_epoch_with_persistent_workers(tiny_data, tmp_path):
    # Training workers ignore SIGTERM; multiprocessing's exit handler terminates children
    # with SIGTERM and joins them, so live workers at exit used to hang the process.
    script = tmp_path / "partial.py"
    script.write_text(textwrap.dedent(f"""
        from utils.data.loaders import build_train_loader, build_val_loader
        from utils.dist import DistEnv

        kept = []

        def main():
            train = build_train_loader({os.path.join(tiny_data, "train")!r}, 32, 4,
                                       DistEnv(), 1, 0)
            train.set_epoch(0)
            it = iter(train)
            for _ in range(3):
                next(it)
            val = build_val_loader({os.path.join(tiny_data, "val")!r}, 32, 2, DistEnv(), 1)
            vit = iter(val)
            next(vit)
            kept.extend([train, it, vit])  # alive until interpreter exit
            print("returning", flush=True)

        main()
        """))
    r = subprocess.run([sys.executable, str(script)], env=run_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "returning"
