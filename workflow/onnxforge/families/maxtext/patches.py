"""Every change onnxforge makes to MaxText's own code, in one registry: what is replaced
(``module:Class.attribute``), by what, and why. Patches are applied by group, once
(idempotent), and restored by ``restore``; a replacement calls MaxText's own through
``original_of(replacement)``.

Groups, each applied by the code that needs it:

- ``export`` (runtime.py): what jax2onnx or ONNX Runtime cannot take, and settings MaxText
  ignores; the JAX side of parity runs them too, so transformers checks them;
- ``cache`` (decoder.py): the KV step, MaxText's chunked prefill over a cache passed in;
- ``sparse`` (sparse_moe.py): MoE experts on their routed tokens only.

The debug taps' wrappers (taps.py) live for one forward only: ``temporarily``.
Registering imports nothing of MaxText; ``apply`` does.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

GROUPS = ("export", "cache", "sparse")


@dataclass(frozen=True)
class Patch:
    group: str
    target: str  # "maxtext.layers.attentions:Attention.__init__"
    replacement: Callable[..., Any]
    why: str


PATCHES: dict[str, Patch] = {}  # by target, in the order registered
_APPLIED: dict[str, tuple[Any, bool]] = {}  # target: (what it replaced, owned by the class)


def replaces(target: str, group: str, why: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as ``target``'s replacement in ``group``."""
    if group not in GROUPS:
        raise ValueError(f"{group!r} is not one of {GROUPS}")

    def register(replacement: Callable) -> Callable:
        if target in PATCHES:
            raise ValueError(f"{target} is patched twice")
        PATCHES[target] = Patch(group, target, replacement, why)
        return replacement

    return register


def _owner(target: str) -> tuple[Any, str]:
    module, _, path = target.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def apply(group: str) -> None:
    """Put ``group``'s replacements in place (those already in place stay)."""
    for patch in PATCHES.values():
        if patch.group != group or patch.target in _APPLIED:
            continue
        owner, name = _owner(patch.target)
        _APPLIED[patch.target] = (getattr(owner, name), name in vars(owner))
        setattr(owner, name, patch.replacement)


def restore(group: str | None = None) -> None:
    """Put MaxText's own code back (``group``'s, or every group's)."""
    for target in reversed(list(_APPLIED)):
        if group is not None and PATCHES[target].group != group:
            continue
        owner, name = _owner(target)
        original, owned = _APPLIED.pop(target)
        if owned:
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # it was inherited: inherit it again


def applied() -> list[str]:
    return list(_APPLIED)


def original_of(replacement: Callable) -> Callable:
    """MaxText's own code that ``replacement`` stands in for (to call through to)."""
    for target, patch in PATCHES.items():
        if patch.replacement is replacement:
            if target not in _APPLIED:
                raise RuntimeError(f"{target} is not patched (patches.apply({patch.group!r}))")
            return _APPLIED[target][0]
    raise KeyError(f"{replacement.__name__} replaces nothing registered")


@contextlib.contextmanager
def temporarily(owner: Any, name: str, replacement: Callable) -> Iterator[Callable]:
    """``owner.name`` replaced while the block runs; yields what it replaced."""
    owned, original = name in vars(owner), getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield original
    finally:
        if owned:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
