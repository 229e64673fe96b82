"""Torch state-dict keys: the order of their modules, and a user's renames.

`lm.from_torch` matches lamina's layers to torch's modules in order, so the
order must be the one the modules run in, whatever order a dict or file
lists them; `key_map` renames keys of state dicts whose names or order are
not lamina's (torchvision's ViT blocks, Hugging Face models).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from lamina._src.core.errors import layer_error

KeyMap = Union[Callable[[str], Any], Sequence[tuple]]
"""Torch key -> the key lamina matches (and the tensor's layout): a function or regex rules."""

_WHOLE = ("transpose", "unsqueeze")
LAYOUTS = (*_WHOLE, "part I/N")
"""How a torch tensor differs from the layout of the torch name lamina matches it to:
`"transpose"`, a matrix stored `(in, out)` (Hugging Face's `Conv1D`) for torch's
`nn.Linear` `(out, in)`; `"unsqueeze"`, a tensor without the leading axis of one
that lamina's torch name has (GPT-2's `wpe.weight` `(L, D)` as a
`PositionEmbedding`'s `pos_embedding` `(1, L, D)`); `"part I/N"` (e.g.
`"part 0/3"`), the I-th of N tensors that lamina's one tensor joins along its
first axis (diffusers' `to_q`, `to_k`, `to_v` as attention's `in_proj_weight`)."""

_PART = re.compile(r"part (\d+)/(\d+)")


class Renamed(NamedTuple):
    """The torch keys the key map gave one new key: one, or its parts in order; their layout."""

    keys: tuple[str, ...]
    layout: Optional[str]


def _part(layout: Any) -> Optional[tuple[int, int]]:
    """`(I, N)` of a `"part I/N"` layout with `0 <= I < N`, else None."""
    found = _PART.fullmatch(layout) if isinstance(layout, str) else None
    if found is None:
        return None
    index, count = int(found[1]), int(found[2])
    return (index, count) if index < count else None


def _known(layout: Any) -> bool:
    return layout is None or layout in _WHOLE or _part(layout) is not None


def renamed_keys(keys: Any, key_map: KeyMap, where: str) -> dict[str, Renamed]:
    """`{new key: Renamed(torch keys, layout)}` for the keys `key_map` keeps, in their order.

    Parts of one new key are gathered in part order under the layout `"parts"`.
    """
    rename = _rule(key_map, where)
    out: dict[str, Renamed] = {}
    parts: dict[str, dict[int, str]] = {}
    counts: dict[str, int] = {}
    for key in keys:
        new = rename(key)
        if new is None:
            continue
        name, layout = new if isinstance(new, tuple) and len(new) == 2 else (new, None)
        if not isinstance(name, str) or not _known(layout):
            raise layer_error(
                where, f"key_map({key!r}) must return a str, a (str, layout) pair with layout "
                       f"in {LAYOUTS}, or None, got {new!r}", TypeError)
        part = _part(layout)
        if name in out and (part is None or name not in parts):
            why = "" if part is None and name not in parts else " (only parts may share a key)"
            raise layer_error(
                where, f"key_map maps both {out[name].keys[0]!r} and {key!r} to {name!r}{why}")
        if part is None:
            out[name] = Renamed((key,), layout)
            continue
        index, count = part
        if counts.setdefault(name, count) != count or index in parts.setdefault(name, {}):
            raise layer_error(
                where, f"key_map gives {key!r} the layout {layout!r}, but {name!r} already has "
                       f"{'that part' if counts[name] == count else f'{counts[name]} parts'}: "
                       f"{sorted(parts[name].values())}")
        parts[name][index] = key
        out.setdefault(name, Renamed((key,), "parts"))  # its place in the order; filled below
    for name, got in parts.items():
        missing = sorted(set(range(counts[name])) - set(got))
        if missing:
            raise layer_error(
                where, f"key_map gives {name!r} parts {sorted(got)} of {counts[name]}, but no "
                       f"key for part {', '.join(map(str, missing))}")
        out[name] = Renamed(tuple(got[i] for i in range(counts[name])), "parts")
    return out


def _rule(key_map: KeyMap, where: str) -> Callable[[str], Any]:
    """`key_map` as one function of a key."""
    if callable(key_map):
        return key_map
    if isinstance(key_map, Sequence) and not isinstance(key_map, str) and all(
            isinstance(rule, (tuple, list)) and len(rule) in (2, 3)
            and isinstance(rule[0], str) and (rule[1] is None or isinstance(rule[1], str))
            and (len(rule) == 2 or (rule[2] is not None and _known(rule[2])))
            for rule in key_map):
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


def to_lamina_layout(tensors: Sequence[Any], renamed: Renamed, where: str) -> Any:
    """Torch tensors (NumPy) of one new key as one tensor in the layout of its torch name."""
    layout = renamed.layout
    if layout == "parts":
        shapes = [np.shape(t) for t in tensors]
        if any(len(s) == 0 or s[1:] != shapes[0][1:] for s in shapes):
            raise layer_error(
                where, f"key_map joins {', '.join(map(repr, renamed.keys))} along their first "
                       f"axis, but their shapes {shapes} differ after it")
        return np.concatenate(tensors, axis=0)
    (value,) = tensors
    if layout == "transpose":
        return np.swapaxes(value, -1, -2) if np.ndim(value) >= 2 else value
    if layout == "unsqueeze":
        return value[None]
    return value


def to_torch_layout(value: Any, renamed: Renamed, shapes: Mapping[str, tuple],
                    where: str) -> dict[str, Any]:
    """The inverse of `to_lamina_layout`: `{torch key: tensor}`, parts split by `shapes`."""
    keys, layout = renamed
    if layout == "parts":
        if all(k in shapes for k in keys):
            sizes = [shapes[k][0] if shapes[k] else 0 for k in keys]
        elif np.ndim(value) and np.shape(value)[0] % len(keys) == 0:
            sizes = [np.shape(value)[0] // len(keys)] * len(keys)
        else:
            sizes = []
        if np.ndim(value) == 0 or sum(sizes) != np.shape(value)[0]:
            raise layer_error(
                where, f"key_map splits a lamina tensor of shape {np.shape(value)} into "
                       f"{len(keys)} parts along its first axis ({', '.join(map(repr, keys))}), "
                       f"which it cannot be")
        ends = np.cumsum(sizes)[:-1]
        return {k: np.ascontiguousarray(v) for k, v in zip(keys, np.split(value, ends, axis=0))}
    (key,) = keys
    if layout == "transpose":
        value = np.ascontiguousarray(np.swapaxes(value, -1, -2)) if np.ndim(value) >= 2 else value
    elif layout == "unsqueeze":
        if np.ndim(value) == 0 or np.shape(value)[0] != 1:
            raise layer_error(
                where, f"key_map gives torch {key!r} the layout 'unsqueeze', but its lamina "
                       f"tensor has shape {np.shape(value)}, without a leading axis of one")
        value = value[0]
    return {key: value}


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
