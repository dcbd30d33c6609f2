"""DataIndex: what one split of a dataset holds, before any pixel is read.

`root` (where it came from, as given), `classes` (label i = classes[i]), `samples`
((key, label) pairs: a file path for an image folder, an array row for in-memory images)
and `class_to_idx`. `with_samples(samples)` is the same split restricted or relabelled
(SPOS scoring decodes a fixed subset this way); a dataset's `images(index, ...)` turns
an index into the seeded pipeline (utils.data.transforms.SeededImages).
"""
from __future__ import annotations

import copy
from typing import Sequence


class DataIndex:
    def __init__(self, root: str, classes: Sequence[str], samples: Sequence[tuple[object, int]]):
        self.root, self.classes, self.samples = root, list(classes), list(samples)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def counts(self) -> list[int]:
        """Samples per class, in class order."""
        out = [0] * len(self.classes)
        for _, label in self.samples:
            out[label] += 1
        return out

    def with_samples(self, samples: Sequence[tuple[object, int]]) -> "DataIndex":
        """A copy holding `samples` (keys of this index, any labels) instead."""
        other = copy.copy(self)
        other.samples = list(samples)
        return other
