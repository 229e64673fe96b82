"""Torch state-dict keys: the order of their modules, and a user's renames.

`lm.from_torch` matches lamina's layers to torch's modules in order, so the
order must be the one the modules run in, whatever order a dict or file
lists them; `key_map` renames keys of state dicts whose names or order are
not lamina's (torchvision's ViT blocks, Hugging Face models).
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np

from lamina._src.core.errors import layer_error

KeyMap = Union[Callable[[str], Any], Sequence[tuple]]
"""Torch key -> the key lamina matches (and the tensor's layout): a function or regex rules."""

LAYOUTS = ("transpose", "unsqueeze")
"""How a torch tensor differs from the layout of the torch name lamina matches it to:
`"transpose"`, a matrix stored `(in, out)` (Hugging Face's `Conv1D`) for torch's
`nn.Linear` `(out, in)`; `"unsqueeze"`, a tensor without the leading axis of one
that lamina's torch name has (GPT-2's `wpe.weight` `(L, D)` as a
`PositionEmbedding`'s `pos_embedding` `(1, L, D)`)."""


class Renamed(NamedTuple):
    """A torch key the key map kept: its own name, and its layout."""

    key: str
    layout: Optional[str]


def renamed_keys(keys: Any, key_map: KeyMap, where: str) -> dict[str, Renamed]:
    """`{new key: Renamed(torch key, layout)}` for the keys `key_map` keeps, in their order."""
    rename = _rule(key_map, where)
    out: dict[str, Renamed] = {}
    for key in keys:
        new = rename(key)
        if new is None:
            continue
        name, layout = new if isinstance(new, tuple) and len(new) == 2 else (new, None)
        if not isinstance(name, str) or layout not in (None, *LAYOUTS):
            raise layer_error(
                where, f"key_map({key!r}) must return a str, a (str, layout) pair with layout "
                       f"in {LAYOUTS}, or None, got {new!r}", TypeError)
        if name in out:
            raise layer_error(where, f"key_map maps both {out[name].key!r} and {key!r} to {name!r}")
        out[name] = Renamed(key, layout)
    return out


def _rule(key_map: KeyMap, where: str) -> Callable[[str], Any]:
    """`key_map` as one function of a key."""
    if callable(key_map):
        return key_map
    if isinstance(key_map, Sequence) and not isinstance(key_map, str) and all(
            isinstance(rule, (tuple, list)) and len(rule) in (2, 3)
            and isinstance(rule[0], str) and (rule[1] is None or isinstance(rule[1], str))
            and (len(rule) == 2 or rule[2] in LAYOUTS) for rule in key_map):
        try:
            rules = [(re.compile(rule[0]), rule[1], rule[2] if len(rule) == 3 else None)
                     for rule in key_map]
        except re.error as error:
            raise layer_error(where, f"key_map holds a bad pattern: {error}") from None

        def rename(key: str) -> Any:
            layout = None
            for pattern, repl, rule_layout in rules:
                if repl is None:  # a tensor lamina has no place for
                    if pattern.search(key):
                        return None
                    continue
                key, n = pattern.subn(repl, key)
                if n and rule_layout is not None:
                    layout = rule_layout
            return key if layout is None else (key, layout)

        return rename
    raise layer_error(
        where,
        f"key_map must be a function of a torch key or a list of (pattern, replacement) or "
        f"(pattern, replacement, layout) rules (replacement None drops the key), layout in "
        f"{LAYOUTS}, got {key_map!r}",
        TypeError,
    )


def to_lamina_layout(value: Any, layout: Optional[str]) -> Any:
    """A torch tensor (NumPy) in the layout of the torch name lamina matched it to."""
    if layout == "transpose":
        return np.swapaxes(value, -1, -2) if np.ndim(value) >= 2 else value
    if layout == "unsqueeze":
        return value[None]
    return value


def to_torch_layout(value: Any, layout: Optional[str], key: str, where: str) -> Any:
    """The inverse of `to_lamina_layout`, for torch's `key`."""
    if layout == "transpose":
        return np.ascontiguousarray(np.swapaxes(value, -1, -2)) if np.ndim(value) >= 2 else value
    if layout == "unsqueeze":
        if np.ndim(value) == 0 or np.shape(value)[0] != 1:
            raise layer_error(
                where, f"key_map gives torch {key!r} the layout 'unsqueeze', but its lamina "
                       f"tensor has shape {np.shape(value)}, without a leading axis of one")
        return value[0]
    return value


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
