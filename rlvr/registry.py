"""One registry type for every plug-in point (advantages, losses, credit criteria, schedules,
verifiers, dataset adapters, rollout backends).

Design: a registry is an explicit, ordered name -> implementation table built where the
implementations live, so a reader sees every choice in one place, and adding one is one line.  Lookups go
through :meth:`Registry.get`, which fails in one line naming the valid choices; registering
a name twice fails.  The torch-free name lists in :mod:`rlvr.config` mirror these tables and
``tests/test_algo_contracts.py`` keeps the two equal.  Pure Python: no torch import.
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Mapping, Optional, Tuple, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation.  ``kind`` names the config key or role in error messages."""

    def __init__(self, kind: str, entries: Optional[Mapping[str, T]] = None):
        self.kind = kind
        self._entries: Dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.add(name, value)

    def add(self, name: str, value: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = value
        return value

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda value: self.add(name, value)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} '{name}'; valid choices: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
