"""In-memory images (uint8 arrays) through the same seeded pipeline as image files.

`ArrayIndex` holds a split's images (uint8 [N, H, W] grey or [N, H, W, 3] RGB), its
classes, (row, label) samples and one identity name per row (for fingerprints);
`ArrayImages` decodes a row as PIL would a file of those pixels: a grey image is
replicated to 3 channels (PIL's L -> RGB, as utils/data/demo.py writes its PNGs), so
the network input stays 3-channel and a row gives the same pixels as its PNG would.
Nothing is written to disk; a DataLoader's workers share the arrays by fork.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from utils.data.index import DataIndex
from utils.data.transforms import SeededImages
from utils.errors import UserError


class ArrayIndex(DataIndex):
    """A split of in-memory images: `images[row]`, samples (row, label), `names[row]`."""

    def __init__(self, root: str, classes: Sequence[str], images: np.ndarray,
                 samples: Sequence[tuple[int, int]], names: Sequence[str] | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
                images.ndim == 4 and images.shape[3] != 3):
            raise UserError(f"{root}: in-memory images must be uint8 [N, H, W] or "
                            f"[N, H, W, 3], got {images.dtype} {list(images.shape)}")
        super().__init__(root, classes, samples)
        self.images = images
        self.names = list(names) if names is not None else [str(i) for i in range(len(images))]


class ArrayImages(SeededImages):
    """(row, label) samples of a uint8 image array, seeded as SeededImages.

    `images`: uint8 [N, H, W] (grey) or [N, H, W, 3] (RGB); `names[row]`: the identity
    of each row in fingerprints (default: the row number).
    """

    def __init__(self, images: np.ndarray, samples: Sequence[tuple[int, int]],
                 input_size: int, train: bool, names: Sequence[str] | None = None, **kwargs):
        super().__init__(samples, input_size, train, **kwargs)
        self.images = images
        self.names = list(names) if names is not None else [str(i) for i in range(len(images))]

    def open(self, key: int) -> Image.Image:
        return Image.fromarray(self.images[int(key)])

    def decode(self, img: Image.Image, key: int, reduction: int = 1):
        # No compressed form to decode at reduced scale: always full size.
        return (img if img.mode == "RGB" else img.convert("RGB")), 1.0

    def sample_names(self, root: str) -> list[str]:
        return [self.names[int(row)] for row, _ in self.samples]


def array_images(index: ArrayIndex, input_size: int, train: bool, **kwargs) -> ArrayImages:
    """The seeded pipeline over an ArrayIndex (what a dataset's `images` returns)."""
    return ArrayImages(index.images, index.samples, input_size, train, names=index.names,
                       classes=index.classes, **kwargs)
