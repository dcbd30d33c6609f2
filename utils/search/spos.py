"""SPOS candidate scoring (the baseline BN-NAS replaces): BN recalibration + top-1.

For each candidate: reset every BN's running statistics, recompute them in train mode
over a fixed set of training batches (cumulative average, momentum=None, so the result
is the exact mean over those batches and does not depend on any earlier candidate), then
measure top-1 on a fixed validation subset in eval mode.

"Fixed" means the same images in the same order for every candidate: both sets are drawn
once (a seeded random subset, so every class is represented), decoded with the
deterministic validation transform of `utils.data.transforms` (resize + centre crop, no
augmentation), and kept in memory as uint8 tensors - on the GPU when there is one. The
reference used a different validation slice per candidate and augmented BN batches, which
adds ranking noise. Which data: the dataset registry (`dataset=`, utils.data.datasets;
default imagefolder) gives both splits and the normalisation. Inputs are prepared exactly
as in training (`utils.data.loaders.prepare_batch` with the supernet's input format and
the dataset's mean/std).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from utils.data.datasets import DatasetSpec, get_dataset
from utils.data.identity import label_map
from utils.data.index import DataIndex
from utils.data.loaders import prepare_batch, reraise_worker_error
from utils.data.transforms import DEFAULT_INPUT_FORMAT, DEFAULT_RESIZE_MODE
from utils.dist import resolve_device
from utils.errors import UserError
from utils.spaces import SearchSpace


def _preload(spec: DatasetSpec, index: DataIndex, input_size: int, workers: int,
             batch: int = 256, resize_mode: str = DEFAULT_RESIZE_MODE
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `index`'s samples once with the validation transform: (uint8 [N,3,H,W],
    int64 [N])."""
    ds = spec.images(index, input_size, False, resize_mode=resize_mode)
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=max(0, workers))
    images, labels = [], []
    try:
        for x, y in loader:
            images.append(x)
            labels.append(y)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a worker's BadImageError arrives re-wrapped
        reraise_worker_error(e)
        raise
    return torch.cat(images), torch.cat(labels).long()


class SposScorer:
    """Callable: `scorer([N, L] archs) -> [N] top-1 accuracies in percent`."""

    def __init__(self, space: SearchSpace, state_dict: dict, train_dir: str, test_dir: str, *,
                 bn_batches: int = 200, batch_size: int = 128, val_images: int = 10000,
                 device: str | torch.device = "auto", seed: int = 0, workers: int = 4,
                 input_format: str | None = None, log: Callable[[str], None] = print,
                 class_names: Sequence[str] | None = None, resize_mode: str | None = None,
                 source: str = "the supernet", dataset: str | DatasetSpec | None = None):
        """`class_names`: the supernet's (its checkpoint's "classes"): class folders are
        then matched to its outputs by name; without them the folders must number exactly
        its outputs. `resize_mode`: the supernet's --resize-mode (default antialias).
        `dataset`: what `train_dir` / `test_dir` hold (a registered name or a DatasetSpec;
        None: imagefolder): their train and val splits, and the normalisation."""
        if bn_batches < 1 or batch_size < 1 or val_images < 1:
            raise UserError("--bn-batches, --batch-size and --val-images must be at least 1")
        self.space = space
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dataset = get_dataset(dataset)
        self.input_format = input_format or DEFAULT_INPUT_FORMAT
        self.batch_size = batch_size
        self.resize_mode = resize_mode or DEFAULT_RESIZE_MODE
        cfg = space.config

        train = self.dataset.index(train_dir, "train", "--train_dir")
        val = self.dataset.index(test_dir, "val", "--test_dir")
        # Label = the supernet's output of the class: matched by name when it records its
        # class names, else the class's index in the TRAINING folder (which must then
        # have exactly as many classes as the supernet has outputs).
        label_map(train.classes, class_names, cfg.classes, "--train_dir", source)
        if class_names:
            vmap = label_map(val.classes, class_names, cfg.classes, "--test_dir", source)
            val_samples = [(p, vmap[y] if vmap else y) for p, y in val.samples]
        else:
            extra = sorted(set(val.classes) - set(train.classes))
            if extra:
                raise UserError(f"--test_dir has class folder '{extra[0]}' that --train_dir "
                                f"lacks")
            val_samples = [(p, train.class_to_idx[val.classes[y]]) for p, y in val.samples]

        rng = np.random.default_rng(seed)
        want = bn_batches * batch_size
        if len(train.samples) < want:
            bn_batches = max(1, math.ceil(len(train.samples) / batch_size))
            log(f"note: --train_dir has {len(train.samples)} images, fewer than "
                f"{want} (--bn-batches x --batch-size); recalibrating on all of them "
                f"({bn_batches} batches)")
        self.bn_batches = bn_batches
        pick = rng.permutation(len(train.samples))[:min(want, len(train.samples))]
        vpick = rng.permutation(len(val_samples))[:val_images]
        if len(vpick) < val_images:
            log(f"note: --test_dir has {len(val_samples)} images; validating on all of them")
        self.val_images = len(vpick)

        t0 = time.perf_counter()
        x, y = _preload(self.dataset, train.with_samples([train.samples[i] for i in pick]),
                        cfg.input_size, workers, resize_mode=self.resize_mode)
        vx, vy = _preload(self.dataset, val.with_samples([val_samples[i] for i in vpick]),
                          cfg.input_size, workers, resize_mode=self.resize_mode)
        self.preload_seconds = time.perf_counter() - t0
        self.train_images, self.train_labels = self._to_device(x), y
        self.val_x, self.val_y = self._to_device(vx), self._to_device(vy)
        log(f"SPOS scoring: {len(pick)} training images in {self.bn_batches} BN batches, "
            f"{self.val_images} validation images, resize {self.resize_mode}, on {self.device} "
            f"(decoded in {self.preload_seconds:.1f}s)")

        self.net = space.supernet().to(self.device)
        try:
            missing, unexpected = self.net.load_state_dict(state_dict, strict=False)
        except RuntimeError as e:  # shape mismatches
            lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
            raise UserError(f"supernet weights do not fit its config: "
                            f"{(lines or [str(e).splitlines()[0]])[0]}") from None
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise UserError(f"supernet weights do not fit: "
                            f"{(missing or unexpected)[0]} {'missing' if missing else 'unexpected'}")
        self.bns = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if self.device.type == "cuda":
            # Same algorithms every call, so a candidate's accuracy never depends on timing.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.seconds: list[float] = []

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return t
        try:
            return t.to(self.device)
        except torch.OutOfMemoryError:
            return t.pin_memory()  # too big for the GPU: stream it from pinned memory

    def _batches(self, x: torch.Tensor, y: torch.Tensor, n_batches: int | None = None):
        n = len(x)
        for k, lo in enumerate(range(0, n, self.batch_size)):
            if n_batches is not None and (k >= n_batches or n - lo < 2):
                return  # train-mode BN cannot normalise a batch of one 1x1 map
            yield prepare_batch((x[lo:lo + self.batch_size], y[lo:lo + self.batch_size]),
                                self.device, self.input_format, dataset=self.dataset)

    @torch.no_grad()
    def score_one(self, arch: Sequence[int]) -> float:
        t0 = time.perf_counter()
        arch = tuple(int(a) for a in arch)
        for bn in self.bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average = exact mean over the batches
        self.net.train()
        for x, _ in self._batches(self.train_images, self.train_labels, self.bn_batches):
            self.net(x, arch)
        self.net.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for x, y in self._batches(self.val_x, self.val_y):
            correct += (self.net(x, arch).argmax(1) == y).sum()
        acc = 100.0 * int(correct) / self.val_images
        self.seconds.append(time.perf_counter() - t0)
        return acc

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        return np.array([self.score_one(a) for a in np.atleast_2d(archs)], dtype=np.float64)
