"""Torch state-dict keys: the order of their modules, and a user's renames.

`lm.from_torch` matches lamina's layers to torch's modules in order, so the
order must be the one the modules run in, whatever order a dict or file
lists them; `key_map` renames keys of state dicts whose names or order are
not lamina's (torchvision's ViT blocks, Hugging Face models).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Union

from lamina._src.core.errors import layer_error

KeyMap = Union[Callable[[str], Optional[str]], Sequence[tuple[str, str]]]
"""Torch key -> the key lamina matches: a function (None drops the key) or regex renames."""


def renamed_keys(keys: Any, key_map: KeyMap, where: str) -> dict[str, str]:
    """`{new key: torch key}` for the keys `key_map` keeps, in their order."""
    if callable(key_map):
        rename = key_map
    elif isinstance(key_map, Sequence) and not isinstance(key_map, str) and all(
            isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(part, str) for part in pair) for pair in key_map):
        try:
            rules = [(re.compile(pattern), repl) for pattern, repl in key_map]
        except re.error as error:
            raise layer_error(where, f"key_map holds a bad pattern: {error}") from None

        def rename(key: str) -> str:
            for pattern, repl in rules:
                key = pattern.sub(repl, key)
            return key
    else:
        raise layer_error(
            where,
            f"key_map must be a function of a torch key or a list of (pattern, replacement) "
            f"pairs of str, got {key_map!r}",
            TypeError,
        )
    out: dict[str, str] = {}
    for key in keys:
        new = rename(key)
        if new is None:
            continue
        if not isinstance(new, str):
            raise layer_error(
                where, f"key_map({key!r}) must return a str or None, got {new!r}", TypeError)
        if new in out:
            raise layer_error(where, f"key_map maps both {out[new]!r} and {key!r} to {new!r}")
        out[new] = key
    return out


def module_order(keys: Any) -> list[str]:
    """Torch keys in the order of their modules: indices by number, names as they first come.

    A state dict's own order is not to be trusted: safetensors hands keys
    back sorted as text (`0, 1, 10, 11, 2`), and a user may shuffle them.
    `nn.Sequential`'s indices say the true order, so they sort by number
    (`2.weight` before `10.weight`) wherever they appear; named children
    (`conv1`, `bn1`) keep the order in which they first appear.
    """
    keys = list(keys)
    first: dict[tuple, int] = {}
    for key in keys:
        parts = key.split(".")
        for depth in range(len(parts)):
            first.setdefault(tuple(parts[: depth + 1]), len(first))

    def rank(key: str) -> tuple:
        parts = key.split(".")
        return tuple((0, int(part)) if part.isdigit() else (1, first[tuple(parts[: i + 1])])
                     for i, part in enumerate(parts))

    return sorted(keys, key=rank)
