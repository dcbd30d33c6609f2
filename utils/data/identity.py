"""Which data a checkpoint was trained on, and whether other data fits it.

- `fingerprint(root, classes, samples)`: class names, per-class image counts and a sha256
  of the sorted relative file list (names only, no file contents: cheap even for
  ImageNet). Stored as `data` in supernet and retrain checkpoints, with `classes`.
  `loader_fingerprint(root, loader)` is the same over the loader dataset's
  `sample_names(root)`: relative paths for a folder, each sample's identity string for
  in-memory images (e.g. Fashion-MNIST's "train/<class>/<source index>"), so the same
  checks work for every registered dataset.
- `check_resume_data(saved, now, path, allow)`: refuses, in one line, resuming a
  checkpoint on other data (another folder, one image added or removed) unless `allow`
  (--allow-data-change); other class names are refused even then, since every output
  of the classifier would then stand for another class.
- `label_map(folder_classes, names, outputs, what, path)`: the checkpoint's output index
  of each class folder, matched BY NAME when the checkpoint records its class names (a
  folder with a subset of them is fine; an unknown class is refused), else by position,
  which needs exactly as many folders as the classifier has outputs.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

from utils.errors import UserError


def relative_names(root: str, paths: Sequence[str]) -> list[str]:
    """Each path relative to `root` (the names a folder's fingerprint hashes)."""
    prefix = os.path.join(root, "")
    return [p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root)
            for p in paths]


def names_fingerprint(classes: Sequence[str], names: Sequence[str],
                      labels: Sequence[int]) -> dict:
    """The fingerprint of samples called `names` (their identity strings) with `labels`."""
    h = hashlib.sha256()
    counts = [0] * len(classes)
    for label in labels:
        counts[label] += 1
    for rel in sorted(names):
        h.update(rel.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return dict(classes=list(classes), counts=counts, num_images=len(names),
                files_sha256=h.hexdigest())


def fingerprint(root: str, classes: Sequence[str], samples: Sequence[tuple[str, int]]) -> dict:
    return names_fingerprint(classes, relative_names(root, [p for p, _ in samples]),
                             [label for _, label in samples])


def loader_fingerprint(root: str, loader) -> dict:
    """The fingerprint of a training loader of utils.data.loaders: its dataset's sample
    names (relative file paths for a folder; the dataset's identities for in-memory
    images) and labels."""
    ds = loader.dataset
    return names_fingerprint(loader.classes, ds.sample_names(root), [y for _, y in ds.samples])


def _first_diff(a: Sequence, b: Sequence) -> str:
    only_a = [x for x in a if x not in set(b)]
    only_b = [x for x in b if x not in set(a)]
    if only_b:
        return f"'{only_b[0]}' is new"
    if only_a:
        return f"'{only_a[0]}' is gone"
    return "same names, other order"


def check_resume_data(saved: dict | None, now: dict, path: str, allow: bool, log,
                      flag: str = "--train_dir") -> None:
    """Refuse resuming `path` (whose fingerprint is `saved`) on data `now` in one line."""
    if not saved:
        return  # a checkpoint from before fingerprints: nothing to compare
    old_classes = list(saved.get("classes") or [])
    if old_classes and old_classes != now["classes"]:
        raise UserError(f"{flag} has other classes than checkpoint {path} was trained on "
                        f"({len(old_classes)} vs {len(now['classes'])} classes; "
                        f"{_first_diff(old_classes, now['classes'])}): the classifier's "
                        f"outputs would stand for other classes; use the original data or "
                        f"another checkpoint")
    diffs = []
    if saved.get("num_images") != now["num_images"]:
        diffs.append(f"{saved.get('num_images')} vs {now['num_images']} images")
    old_counts = saved.get("counts")
    if old_counts and old_counts != now["counts"]:
        i = next((i for i, (a, b) in enumerate(zip(old_counts, now["counts"])) if a != b), 0)
        diffs.append(f"class '{now['classes'][i]}': {old_counts[i]} vs {now['counts'][i]}")
    if saved.get("files_sha256") != now["files_sha256"] and not diffs:
        diffs.append("same counts but other file names")
    if not diffs:
        return
    what = "; ".join(diffs)
    if allow:
        log(f"note: {flag} differs from the data checkpoint {path} was trained on ({what}); "
            f"continuing as --allow-data-change asks (sampling continues on the new list)")
        return
    raise UserError(f"{flag} is not the data checkpoint {path} was trained on ({what}; "
                    f"checkpoint vs now): rerun with the same data, pass --allow-data-change "
                    f"if the change is deliberate, or use another checkpoint")


def label_map(folder_classes: Sequence[str], names: Sequence[str] | None, outputs: int,
              what: str, path: str) -> list[int] | None:
    """Output index per class folder (None: the identity); a mismatch is one line."""
    folder_classes = list(folder_classes)
    if names:
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in folder_classes if c not in index]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise UserError(f"{what} has class folder '{unknown[0]}'{more} that {path} was "
                            f"not trained on (it knows {len(names)} classes, e.g. "
                            f"'{names[0]}')")
        mapping = [index[c] for c in folder_classes]
        return None if mapping == list(range(len(folder_classes))) else mapping
    if len(folder_classes) != outputs:
        raise UserError(f"{path} does not record its class names, so {what} must have "
                        f"exactly its {outputs} classes (labels follow the sorted folder "
                        f"names); it has {len(folder_classes)}")
    return None
