"""Fashion-MNIST demo data: a committed stratified slice and an ImageFolder writer.

The repository ships ``data/fashion_mnist/fashion_mnist_slice.npz`` (600 train +
200 val images per class) so the demo runs offline.  This module turns that
slice (or the full Debian ``dataset-fashion-mnist`` package) into an RGB
ImageFolder tree, and can regenerate the slice from the Debian files.

    python3 tools/demo_data.py --out data/imagefolder --size 32
    python3 tools/demo_data.py --make-slice          # needs dataset-fashion-mnist
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import UserError
from utils.files import write_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
SLICE_PATH = REPO_ROOT / "data" / "fashion_mnist" / "fashion_mnist_slice.npz"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_DIR_ENV = "FASHION_MNIST_DIR"  # lets tests/users point at another copy

# Official label order from the Fashion-MNIST README.
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SPLITS = ("train", "val")
# Debian/official file stems for each of our splits (val = official test set).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SLICE_TRAIN_PER_CLASS = 600
SLICE_VAL_PER_CLASS = 200
MARKER = ".complete.json"
MARKER_FORMAT = 1
# Below this many images a process pool costs more than it saves.
POOL_THRESHOLD = 2000


class DemoDataError(Exception):
    """Bad input or missing data; the CLI reports it as one line, exit 2."""


def folder_name(label: int, name: str) -> str:
    """'T-shirt/top' -> '0_tshirt_top'; the digit prefix keeps sort order == label order."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("-", "")).strip("_")
    return f"{label}_{slug}"


# ---------------------------------------------------------------- reading data

def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzip or plain) holding unsigned bytes."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DemoDataError(f"cannot read {path}: {exc}") from None
    # Header: two zero bytes, type code 0x08 (ubyte), ndim, then big-endian dims.
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DemoDataError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DemoDataError(f"{path} has a truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise DemoDataError(f"{path} holds {data.size} bytes, header says {dims}")
    return data.reshape(dims)


def _find_idx(debian_dir: Path, stem: str) -> Path:
    # Accept the packaged .gz or a gunzipped copy.
    for name in (stem + ".gz", stem):
        if (debian_dir / name).is_file():
            return debian_dir / name
    raise DemoDataError(
        f"Fashion-MNIST file {stem}.gz not found in {debian_dir} "
        f"(install dataset-fashion-mnist or pass --debian-dir)")


def load_idx_split(debian_dir: Path | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of one split ("train" or "val" = t10k)
    from the idx files in `debian_dir`, checked."""
    debian_dir = Path(debian_dir)
    img_stem, lab_stem = IDX_FILES[split]
    images = read_idx(_find_idx(debian_dir, img_stem))
    labels = read_idx(_find_idx(debian_dir, lab_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DemoDataError(f"{debian_dir}: {split} images/labels shapes do not match")
    if labels.size and labels.max() >= len(CLASSES):
        raise DemoDataError(f"{debian_dir}: {split} labels outside 0..{len(CLASSES) - 1}")
    return images, labels


def debian_dir_path(debian_dir: Path | str | None = None) -> Path:
    """The Debian package's folder, or $FASHION_MNIST_DIR, or `debian_dir` if given."""
    return Path(debian_dir or os.environ.get(DEBIAN_DIR_ENV) or DEBIAN_DIR)


def load_debian(debian_dir: Path | str | None = None) -> dict[str, np.ndarray]:
    """Full official splits: train (60k) and val (= t10k, 10k)."""
    debian_dir = debian_dir_path(debian_dir)
    out: dict[str, np.ndarray] = {}
    for split in IDX_FILES:
        images, labels = load_idx_split(debian_dir, split)
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels
        # Position in the official split, kept so file names stay traceable.
        out[f"{split}_source_index"] = np.arange(len(labels), dtype=np.int32)
    out["classes"] = np.array(CLASSES)
    return out


def load_slice(path: Path | str = SLICE_PATH) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DemoDataError(f"slice file {path} not found (regenerate with --make-slice)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DemoDataError(f"cannot read slice {path}: {exc}") from None
    need = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")] + ["classes"]
    missing = [k for k in need if k not in data]
    if missing:
        raise DemoDataError(f"slice {path} lacks arrays: {', '.join(missing)}")
    for split in SPLITS:
        # Older/hand-made slices may lack provenance; fall back to positions.
        data.setdefault(f"{split}_source_index",
                        np.arange(len(data[f"{split}_labels"]), dtype=np.int32))
    return data


def stratified_indices(labels: np.ndarray, per_class: int | None, seed,
                       n_classes: int = len(CLASSES)) -> np.ndarray:
    """Sorted indices with exactly `per_class` items of each class (None = all)."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(n_classes):
        pool = np.flatnonzero(labels == c)
        if per_class > pool.size:
            raise DemoDataError(
                f"class {c} has only {pool.size} images, {per_class} per class requested")
        picked.append(rng.choice(pool, size=per_class, replace=False))
    # Sorting keeps the original (already shuffled) dataset order, not class blocks.
    return np.sort(np.concatenate(picked))


def _split_seed(seed: int, split: str):
    # Independent streams per split so changing one count never reshuffles the other.
    return [seed, SPLITS.index(split)]


# ---------------------------------------------------------------- the slice

def _save_npz_reproducible(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so a regenerated
    slice is byte-identical (no spurious git diffs); written atomically."""
    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w") as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                            compresslevel=9)

    try:
        write_atomic(str(path), ".tmp", write, faults=False)
    except UserError as exc:
        # The CLI reports a failed write as an OSError (exit 1), as before.
        raise OSError(str(exc)) from None


def make_slice(debian_dir: Path | str | None = None, out_path: Path | str = SLICE_PATH,
               train_per_class: int = SLICE_TRAIN_PER_CLASS,
               val_per_class: int = SLICE_VAL_PER_CLASS, seed: int = 0) -> Path:
    """Regenerate the committed stratified slice from the Debian idx files."""
    full = load_debian(debian_dir)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        idx = stratified_indices(full[f"{split}_labels"], per_class, _split_seed(seed, split))
        arrays[f"{split}_images"] = full[f"{split}_images"][idx].astype(np.uint8)
        arrays[f"{split}_labels"] = full[f"{split}_labels"][idx].astype(np.uint8)
        arrays[f"{split}_source_index"] = idx.astype(np.int32)
    arrays["classes"] = np.array(CLASSES)  # fixed-width unicode: no pickle needed
    arrays["seed"] = np.array(seed, dtype=np.int64)
    out_path = Path(out_path)
    _save_npz_reproducible(out_path, arrays)
    return out_path


# ---------------------------------------------------------------- the tree

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_pngs(job: tuple[str, list[str], np.ndarray, int]) -> int:
    """Worker: resize 28x28 grayscale to size x size and save as RGB PNG."""
    folder, names, images, size = job
    for name, img in zip(names, images):
        im = Image.fromarray(img, mode="L")
        if im.size != (size, size):
            # Lanczos keeps edges crisp on both up- and down-scaling.
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        # L -> RGB replicates the grey channel, so pretrained-style 3-channel nets work.
        im.convert("RGB").save(os.path.join(folder, name), format="PNG", compress_level=1)
    return len(names)


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _tree_is_complete(out: Path, marker: dict) -> bool:
    # Cheap recount, so a tree someone trimmed by hand is not mistaken for complete.
    try:
        for split, per_folder in marker["counts"].items():
            for folder, n in per_folder.items():
                with os.scandir(out / split / folder) as it:
                    if sum(1 for e in it if e.name.endswith(".png")) != n:
                        return False
    except (OSError, KeyError, AttributeError, TypeError):
        return False
    return True


def write_tree(out: Path | str, *, size: int = 32, train_per_class: int | None = None,
               val_per_class: int | None = None, source: str = "auto",
               debian_dir: Path | str | None = None, slice_path: Path | str = SLICE_PATH,
               seed: int = 0, workers: int | None = None) -> dict:
    """Write DIR/{train,val}/<label>_<class>/<index>.png, atomically.

    Returns a summary dict; ``summary["skipped"]`` is True when DIR already held
    a complete tree for the same request.  A tree from another request is
    replaced as a whole; a non-empty DIR without our marker is refused.
    """
    if source not in ("auto", "slice", "debian"):
        raise DemoDataError(f"unknown source {source!r} (choose slice, debian or auto)")
    if not 1 <= size <= 1024:
        raise DemoDataError(f"--size must be in 1..1024, got {size}")
    for flag, n in (("--train-per-class", train_per_class), ("--val-per-class", val_per_class)):
        if n is not None and n < 1:
            raise DemoDataError(f"{flag} must be >= 1, got {n}")
    source = "slice" if source == "auto" else source
    out = Path(out)
    slice_path = Path(slice_path)

    request = {"format": MARKER_FORMAT, "source": source, "size": size,
               "train_per_class": train_per_class, "val_per_class": val_per_class,
               "seed": seed}
    if source == "slice":
        if not slice_path.is_file():
            raise DemoDataError(f"slice file {slice_path} not found (regenerate with --make-slice)")
        # A regenerated slice must invalidate trees built from the old one.
        request["slice_sha256"] = _sha256(slice_path)

    if out.exists() and not out.is_dir():
        raise DemoDataError(f"{out} exists and is not a directory")
    marker = _read_marker(out) if out.is_dir() else None
    if marker and marker.get("request") == request and _tree_is_complete(out, marker):
        return {**marker, "out": str(out), "skipped": True, "seconds": 0.0}
    if out.is_dir() and marker is None and any(out.iterdir()):
        # Never delete a directory this tool did not create.
        raise DemoDataError(f"{out} is not empty and is not a demo-data tree; "
                            "remove it or choose another --out")

    t0 = time.perf_counter()
    data = load_slice(slice_path) if source == "slice" else load_debian(debian_dir)
    classes = [str(c) for c in data["classes"]]
    folders = [folder_name(i, c) for i, c in enumerate(classes)]

    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside DIR (same filesystem) so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        jobs, counts = [], {}
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            labels = data[f"{split}_labels"]
            idx = stratified_indices(labels, per_class, _split_seed(seed, split), len(classes))
            counts[split] = {}
            for c, folder in enumerate(folders):
                sel = idx[labels[idx] == c]
                dest = tmp / split / folder
                dest.mkdir(parents=True)
                counts[split][folder] = int(sel.size)
                src = data[f"{split}_source_index"][sel]
                names = [f"{int(s):05d}.png" for s in src]
                images = data[f"{split}_images"][sel]
                # Chunks of ~500 balance the pool without much pickling overhead.
                for lo in range(0, len(names), 500):
                    jobs.append((str(dest), names[lo:lo + 500], images[lo:lo + 500], size))
        total = sum(len(j[1]) for j in jobs)
        n_workers = workers if workers else min(8, os.cpu_count() or 1)
        if n_workers > 1 and total >= POOL_THRESHOLD:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                written = sum(pool.map(_write_pngs, jobs))
        else:
            written = sum(map(_write_pngs, jobs))
        assert written == total

        summary = {"request": request, "classes": classes, "folders": folders,
                   "counts": counts, "total": total,
                   "seconds": round(time.perf_counter() - t0, 3),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # Marker last: its presence is what declares the tree complete.
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the final tree should be readable
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out": str(out), "skipped": False}


def describe(summary: dict) -> str:
    """One-line human summary of a write_tree result."""
    req = summary["request"]
    n_train = sum(summary["counts"]["train"].values())
    n_val = sum(summary["counts"]["val"].values())
    what = (f"train {n_train}, val {n_val}, {len(summary['folders'])} classes, "
            f"{req['size']}x{req['size']} RGB, source={req['source']}")
    if summary["skipped"]:
        return f"demo_data: {summary['out']} already complete ({what}); nothing to do"
    return f"demo_data: wrote {summary['total']} PNGs ({what}) to {summary['out']} in {summary['seconds']:.1f}s"

