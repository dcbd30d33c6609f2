"""Name-keyed registries: search spaces, scorers and datasets register here by name.

    SPACES = Registry("search space")

    @SPACES.register
    class MySpace(SearchSpace):
        name = "myspace"

The command-line choices (`--space`, `--score`, `--dataset`) are read from the registries,
so a plug-in file (`--plugin my_space.py`) that registers a class makes it selectable.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from utils.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, obj: T | None = None, *, name: str | None = None):
        """Register `obj` under `name` (default: its `name` attribute). Usable as a decorator.

        Registering another object under a taken name is refused: a plug-in must not
        silently replace a built-in (re-registering the same object is a no-op).
        """

        def add(o: T) -> T:
            key = name if name is not None else getattr(o, "name", None)
            if not isinstance(key, str) or not key:
                raise UserError(f"a {self.kind} needs a non-empty string `name` to be registered")
            old = self._items.get(key)
            if old is not None and old is not o and _qualname(old) != _qualname(o):
                raise UserError(f"{self.kind} '{key}' is already registered ({_qualname(old)})")
            self._items[key] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            raise UserError(f"unknown {self.kind} '{key}' (choose from "
                            f"{', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


def _qualname(o) -> str:
    # A plug-in imported twice (e.g. by two code paths) gives a new class object with the
    # same module-qualified name: that is the same registration, not a clash.
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', type(o).__qualname__)}"


Factory = Callable[..., T]
