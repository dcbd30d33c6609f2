"""A toy dataset: the worked example of docs/extending.md, and a test plug-in.

Four classes of 16x16 RGB images, generated in memory from a seed: class c is noise
around a mean colour that depends on c, so a network can learn it. The whole dataset is
this one file: any stage script takes it with `--plugin`, and `--dataset toy` then
selects it; the data root (`--train_dir` / `--test_dir`) is the generator's seed:

    python3 supernet/main.py --plugin docs/examples/toy_dataset.py --dataset toy \
        --train_dir 0 --input-size 16 ...

Everything the loaders need is on the class: its normalisation mean/std, and `index`
(which images a split holds, their classes, and each sample's identity for the data
fingerprints that guard resuming). `images` hands the index to ArrayImages, which runs
the project's augmentation (random resized crop at the requested input size, flip, PCA
lighting) with its per-sample seeding, so runs on this data are reproducible too.
"""
from __future__ import annotations

import numpy as np

from utils.data.arrays import ArrayIndex, array_images
from utils.data.datasets import DATASETS, DatasetSpec
from utils.errors import UserError

CLASSES = ("red", "green", "blue", "grey")
COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (128, 128, 128))
PER_CLASS = {"train": 24, "val": 8}
SIZE = 16


@DATASETS.register
class ToyDataset(DatasetSpec):
    name = "toy"  # what --dataset takes
    # Mean/std of the generated pixels in [0, 1], per RGB channel (roughly: each channel is
    # 40 or 200 or 128 out of 255, plus noise); rgb input is normalised with them.
    mean = (0.40, 0.40, 0.40)
    std = (0.30, 0.30, 0.30)
    notes = "16x16 RGB noise around one colour per class, generated from the root (a seed)"
    root_help = "an integer seed"

    def index(self, root, split, what):
        try:
            seed = int(root)
        except (TypeError, ValueError):
            raise UserError(f"{what} {root!r}: --dataset {self.name} takes "
                            f"{self.root_help}") from None
        # Another stream per split, so train and val never share an image.
        rng = np.random.default_rng([seed, ("train", "val").index(split)])
        n = PER_CLASS[split]
        labels = np.repeat(np.arange(len(CLASSES)), n)
        base = np.asarray(COLOURS, dtype=np.float64)[labels][:, None, None, :]
        noise = rng.normal(0.0, 30.0, (len(labels), SIZE, SIZE, 3))
        images = np.clip(base + noise, 0, 255).astype(np.uint8)
        samples = [(row, int(label)) for row, label in enumerate(labels)]
        # A sample's identity: what makes it this image (seed, split and row).
        names = [f"seed{seed}/{split}/{row}" for row in range(len(labels))]
        return ArrayIndex(str(root), CLASSES, images, samples, names)

    def images(self, index, input_size, train, **transform):
        return array_images(index, input_size, train, **transform)
