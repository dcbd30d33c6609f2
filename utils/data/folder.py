"""Image files: ImageFolder indexing, decoding, bad-image checks, SeededImageFolder.

* `scan_image_folder(root)` indexes root/<class>/**/<image> exactly as torchvision's
  ImageFolder does (same class and sample order, same extensions), without importing
  torchvision (which pulls in torch._dynamo: seconds at the start of every rank).
* Decoding cost (see bench/data_loader.py), antialias mode: the crop box is drawn from
  the header's full-size dimensions before any pixel is decoded; a JPEG whose crop is
  >= 2x the input size is then decoded at 1/2, 1/4 or 1/8 scale (PIL `draft`, libjpeg's
  scaled IDCT; the largest factor keeping the crop >= the input size) with the box mapped
  onto it. Only the crop leaves PIL, and torch's vectorised uint8 antialiased-bilinear
  kernel resizes it (PIL's filter; results within 1 grey level). Same crop boxes and
  flips for the same seed as full decoding; pixels differ slightly where the reduced
  decode is used (mean ~1 grey level). `reduced_decode=False` turns it off; linear
  resize mode decodes every JPEG at full size, as the original did.
* A corrupt or unreadable image raises `BadImageError` (a `UserError`: one-line message
  naming the file); `first_unreadable_image` checks a list of files up front.

Public API: IMG_EXTENSIONS, BadImageError, open_image(path) -> PIL image (header only),
decode_rgb(img, path, reduction=1) -> (RGB image, scale), first_unreadable_image(paths),
FolderIndex (.root, .classes, .class_to_idx, .samples), scan_image_folder(root, what),
SeededImageFolder(samples, input_size, train, seed=0, ..., reduced_decode=True,
resize_mode="antialias") with .crop_box(index, epoch=0) -> (top, left, h, w).
"""
from __future__ import annotations

import io
import os
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from utils.data.identity import relative_names
from utils.data.index import DataIndex
from utils.data.transforms import SeededImages
from utils.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ROOT_HELP = "an ImageFolder directory: <root>/<class>/<image>"


class BadImageError(UserError):
    """An image that cannot be decoded; the message names the file."""


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


# ---- indexing -----------------------------------------------------------------------

class FolderIndex(DataIndex):
    """The ImageFolder index of a directory: `classes`, `class_to_idx`, `samples`
    ((path, label), paths starting with `root`)."""


def scan_image_folder(root: str | None, what: str = "--train_dir") -> FolderIndex:
    """Index `root`/<class>/**/<image> exactly as torchvision.datasets.ImageFolder does.

    Same class order (sorted folder names), same sample order (sorted walk) and the same
    image extensions, so labels agree with torchvision; dot-files (e.g. macOS `._x.jpg`)
    are skipped. A bad directory is a one-line UserError.
    """
    if not root:
        raise UserError(f"{what} is required ({ROOT_HELP})")
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


# ---- the dataset --------------------------------------------------------------------

class SeededImageFolder(SeededImages):
    """ImageFolder samples ((path, label)) through the seeded pipeline of SeededImages.

    `reduced_decode` (default on; antialias mode only): a JPEG whose crop is at least 2x
    the input size in both dimensions is decoded at 1/2, 1/4 or 1/8 scale (the largest
    that keeps the crop >= the input size) and the crop box is mapped onto the smaller
    image. The crop boxes are the same either way; pixel values differ a little
    (libjpeg's scaled IDCT instead of a bilinear filter for part of the downsampling, mean
    difference ~1 grey level). Its prefiltering would undo what `resize_mode="linear"`
    reproduces (the original's unfiltered OpenCV resize of the full decode), so linear
    mode always decodes at full size.
    """

    def open(self, key: str) -> Image.Image:
        return open_image(key)

    def decode(self, img: Image.Image, key: str, reduction: int = 1):
        return decode_rgb(img, key, reduction)

    def sample_names(self, root: str) -> list[str]:
        return relative_names(root, [p for p, _ in self.samples])

    def first_unreadable(self, rank: int = 0, world: int = 1) -> str | None:
        return first_unreadable_image([p for p, _ in self.samples[rank::world]])
