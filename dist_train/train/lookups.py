"""Walking a sharded model's embedding lookups, which ``nn.Module.modules()`` does not reach."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


def lookup_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model``, and of its sharded modules' lookups: TorchRec keeps those in
    plain lists (``_lookups``), outside ``modules()``; ``DMPCollection`` walks them the same
    way. Each module once."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(reversed(list(module.children())))
        stack.extend(reversed(getattr(module, "_lookups", None) or []))
