"""The dataset registry: what `--dataset NAME` means, for every stage that reads images.

    DATASETS = Registry("dataset")      # name -> DatasetSpec subclass
    get_dataset(name_or_spec) -> DatasetSpec instance (unknown name: one-line UserError)
    recorded_dataset(saved_args, path) -> the name a checkpoint's args record (older
                                          checkpoints: imagefolder)

A dataset (a `DatasetSpec` subclass, registered with `@DATASETS.register`) has
  name            the --dataset value
  mean, std       RGB normalisation of pixel values in [0, 1] (input format rgb; the
                  bgr255 format ignores them: the reference's BGR 0-255)
  notes           what its images are and how they become the 3-channel input
  root_help       what its data root (--train_dir / --test_dir / --val_dir) is
  index(root, split, what) -> DataIndex      classes, (key, label) samples ("train" or
                                             "val" split; `what` names the flag in errors)
  images(index, input_size, train, **transform) -> SeededImages   the seeded pipeline
and, built on those two, train_dataset(root, input_size, ...), val_dataset(root, ...),
count_classes(root) and require_root(root, what) (the one-line "is required" refusal). Each returned SeededImages has `.classes`, `.samples`,
`.sample_names(root)` (identities for utils.data.identity fingerprints) and
`.first_unreadable(rank, world)`. Every dataset runs the same augmentation
(utils.data.transforms: random resized crop at the requested input size, flip, PCA
lighting) with the same per-sample seeding, so a run is reproducible whatever the data.

Built in:

* `imagefolder` (the default): root/<class>/**/<image> indexed as torchvision's
  ImageFolder (utils.data.folder); ImageNet mean/std. Exactly the behaviour before the
  registry existed.
* `fashion_mnist`: Fashion-MNIST read straight from its idx files or from the bundled
  slice, nothing written to disk. The root is
    "debian"   the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist,
               or $FASHION_MNIST_DIR): train = its 60k train split, val = t10k (10k);
    "slice"    data/fashion_mnist/fashion_mnist_slice.npz (600 + 200 per class): train =
               its train arrays, val = its val arrays;
    a folder   holding the four idx files (train-images-idx3-ubyte, train-labels-idx1-
               ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or not),
               split as "debian";
    a .npz     file in the slice's format, split as "slice".
  Training stages use the train split for --train_dir and the test (val) split for
  --test_dir / --val_dir. Images are 28x28 grey, replicated to 3 channels as
  tools/demo_data.py's PNGs are; classes are the folder names that tool writes
  ("0_tshirt_top", ...), and samples come in the order ImageFolder gives its tree (by
  class, then by position in the official split). So the slice here and the PNG tree
  `tools/demo_data.py --size 28` writes of it give the same batches for the same seed.
"""
from __future__ import annotations

import os
from pathlib import Path
import numpy as np

from utils.data.arrays import ArrayIndex, array_images
from utils.data.folder import ROOT_HELP as FOLDER_ROOT_HELP, SeededImageFolder, scan_image_folder
from utils.data.index import DataIndex
from utils.data.transforms import (CROP_RATIO, DEFAULT_RESIZE_MODE, IMAGENET_MEAN, IMAGENET_STD,
                                   VAL_CROP_FRACTION, SeededImages)
from utils.errors import UserError
from utils.registry import Registry

DEFAULT_DATASET = "imagefolder"
SPLITS = ("train", "val")


class DatasetSpec:
    """A dataset: its name, normalisation and how to build its splits (see the module)."""

    name: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: str = ""
    root_help: str = "its data root"

    def index(self, root: str | None, split: str, what: str) -> DataIndex:
        raise NotImplementedError

    def images(self, index: DataIndex, input_size: int, train: bool, **transform) -> SeededImages:
        raise NotImplementedError

    def train_dataset(self, root: str | None, input_size: int, *, what: str = "--train_dir",
                      seed: int = 0, min_scale: float = 0.08, lighting_std: float = 0.1,
                      crop_ratio: tuple[float, float] = CROP_RATIO, reduced_decode: bool = True,
                      resize_mode: str = DEFAULT_RESIZE_MODE) -> SeededImages:
        """The training split with augmentation (items (image, label, lighting))."""
        return self.images(self.index(root, "train", what), input_size, True, seed=seed,
                           min_scale=min_scale, lighting_std=lighting_std,
                           crop_ratio=crop_ratio, reduced_decode=reduced_decode,
                           resize_mode=resize_mode)

    def val_dataset(self, root: str | None, input_size: int, *, what: str = "--test_dir",
                    split: str = "val", reduced_decode: bool = True,
                    resize_mode: str = DEFAULT_RESIZE_MODE,
                    crop_pct: float = VAL_CROP_FRACTION) -> SeededImages:
        """A split (default: the validation split) with the deterministic val transform
        (resize, then the centre `crop_pct` of it)."""
        return self.images(self.index(root, split, what), input_size, False,
                           reduced_decode=reduced_decode, resize_mode=resize_mode,
                           crop_pct=crop_pct)

    def require_root(self, root: str | None, what: str) -> None:
        """Refuse a missing data root in one line that says what the root should be."""
        if not root:
            given = "" if self.name == DEFAULT_DATASET else f" with --dataset {self.name}"
            raise UserError(f"{what} is required{given} ({self.root_help})")

    def count_classes(self, root: str | None, split: str = "train") -> int | None:
        """How many classes `root` holds, None when it cannot be read (the loader then
        says what is wrong)."""
        try:
            return len(self.index(root, split, "root").classes) or None
        except UserError:
            return None

    def __repr__(self) -> str:
        return f"<dataset {self.name}>"


DATASETS: Registry[type[DatasetSpec]] = Registry("dataset")


def get_dataset(dataset: "str | DatasetSpec | type[DatasetSpec] | None" = None) -> DatasetSpec:
    """The dataset object for a name (None: the default), a DatasetSpec class or instance."""
    if dataset is None:
        dataset = DEFAULT_DATASET
    if isinstance(dataset, str):
        dataset = DATASETS.get(dataset)
    if isinstance(dataset, type):
        dataset = dataset()
    if not isinstance(dataset, DatasetSpec):
        raise UserError(f"not a dataset: {dataset!r}")
    return dataset


def recorded_dataset(saved_args: dict | None, path: str = "the checkpoint") -> str:
    """The --dataset a checkpoint's saved args record; checkpoints from before it was
    recorded were trained on imagefolder. A name not registered in this process (a
    plug-in's, its file not loaded) is a one-line UserError naming the way out."""
    name = (saved_args or {}).get("dataset") or DEFAULT_DATASET
    if name not in DATASETS:
        raise UserError(f"{path} was trained on --dataset {name}, which is not registered "
                        f"here (known: {', '.join(DATASETS.names())}): load the file that "
                        f"defines it with --plugin, or give --dataset")
    return name


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ---- imagefolder --------------------------------------------------------------------

@DATASETS.register
class ImageFolderDataset(DatasetSpec):
    name = "imagefolder"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    notes = "RGB image files, any size (grey and palette images are converted to RGB)"
    root_help = FOLDER_ROOT_HELP

    def index(self, root, split, what):
        _check_split(split)  # a folder is one split: which one is the caller's choice
        return scan_image_folder(root, what)

    def images(self, index, input_size, train, **transform):
        return SeededImageFolder(index.samples, input_size, train, classes=index.classes,
                                 **transform)

    def count_classes(self, root, split="train"):
        # As the stage scripts counted class folders before the registry: no scan.
        if not root or not os.path.isdir(root):
            return None
        n = sum(1 for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        return n or None


# ---- fashion_mnist ------------------------------------------------------------------

# Mean and std of the 60,000 official Fashion-MNIST training images (the Debian package's
# train-images-idx3-ubyte.gz), over all 47,040,000 pixels scaled to [0, 1], computed once
# in float64 as x.mean() and x.std() (population std): 0.2860406 and 0.3530242. The same
# value for all three channels, since grey images are replicated to RGB. (The t10k test
# images give 0.2868 and 0.3524.)
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)


@DATASETS.register
class FashionMnistDataset(DatasetSpec):
    name = "fashion_mnist"
    mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    notes = "28x28 grey Fashion-MNIST images, replicated to 3 channels; 10 classes"
    root_help = ("'debian', 'slice', a folder holding the four Fashion-MNIST idx files, "
                 "or a .npz file in the slice's format")

    def index(self, root, split, what):
        _check_split(split)
        from utils.data import demo  # numpy + PIL only; the idx reader and the slice
        self.require_root(root, what)
        try:
            if root == "slice" or str(root).endswith(".npz"):
                path = demo.SLICE_PATH if root == "slice" else Path(root)
                if root != "slice" and not path.is_file():
                    raise UserError(f"{what} {root} does not exist")
                data = demo.load_slice(path)
                images, labels = data[f"{split}_images"], data[f"{split}_labels"]
                source = np.asarray(data[f"{split}_source_index"])
                names = [str(c) for c in data["classes"]]
            else:
                folder = demo.debian_dir_path() if root == "debian" else Path(root)
                if root != "debian" and not folder.is_dir():
                    raise UserError(f"{what} {root} is not 'debian', 'slice', a .npz file or "
                                    f"a folder (--dataset {self.name} takes "
                                    f"{self.root_help})")
                images, labels = demo.load_idx_split(folder, split)
                source = np.arange(len(labels))
                names = list(demo.CLASSES)
        except demo.DemoDataError as e:
            raise UserError(f"{what} {root}: {e}") from None
        images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
            raise UserError(f"{what} {root}: {split} images must be uint8 [N, H, W] "
                            f"matching the labels")
        if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(names):
            raise UserError(f"{what} {root}: no {split} images, or labels outside "
                            f"0..{len(names) - 1}")
        classes = [demo.folder_name(i, c) for i, c in enumerate(names)]
        # ImageFolder's order over the tree tools/demo_data.py writes: by class, then by
        # file name (the 5-digit source index), so the two give the same per-sample seeds.
        order = np.lexsort((source, labels))
        samples = [(int(r), int(labels[r])) for r in order]
        ids = [f"{split}/{classes[labels[r]]}/{int(source[r]):05d}"
               for r in range(len(labels))]
        return ArrayIndex(str(root), classes, images, samples, ids)

    def images(self, index, input_size, train, **transform):
        return array_images(index, input_size, train, **transform)



def dataset_names() -> list[str]:
    """The --dataset choices: the built-in datasets, then those plug-ins registered."""
    return DATASETS.names()


__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetSpec", "get_dataset", "dataset_names",
           "recorded_dataset",
           "ImageFolderDataset", "FashionMnistDataset", "FASHION_MNIST_MEAN",
           "FASHION_MNIST_STD"]
