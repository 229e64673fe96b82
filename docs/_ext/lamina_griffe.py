"""A griffe extension for lamina's API reference.

1. Docstrings follow the house style's singular `Example:` heading; griffe's
   Google parser knows only `Examples:`, and would otherwise render the
   doctests as prose. The heading is read as `Examples:` here.
2. lamina's built-in layers are frozen dataclasses made by their base class
(`Builtin.__init_subclass__`), which griffe's static analysis does not see as
`@dataclass`, so it would show `Layer.__init__`'s signature for them. This
extension imports each such class and gives it the `__init__` that
`dataclasses` really generated, with each field's plain type (`int` for a
`Count`, whose check is lamina's business, not the reader's).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

import griffe

# Import the lamina that mkdocstrings documents (`paths: [src]`), installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _text(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class LaminaDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name == "lamina":
            self._visit(pkg)

    def _visit(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
        for member in list(obj.members.values()):
            if member.is_alias:
                continue
            if member.is_class or member.is_function or member.is_attribute:
                if member.docstring is not None:
                    member.docstring.value = _EXAMPLE.sub(r"\1Examples:", member.docstring.value)
            if member.is_module:
                self._visit(member)
            elif member.is_class:
                self._set_init(member)

    def _set_init(self, cls: griffe.Class) -> None:
        if "__init__" in cls.members or cls.decorators:
            return  # its own __init__, or a literal @dataclass griffe reads itself
        runtime = getattr(importlib.import_module(cls.module.path), cls.name, None)
        if not dataclasses.is_dataclass(runtime):
            return
        signature = inspect.signature(runtime.__init__)
        hints = typing.get_type_hints(runtime)
        parameters = [
            griffe.Parameter(
                name,
                annotation=_text(hints.get(name, p.annotation)),
                kind=_KINDS[p.kind],
                default=None if p.default is inspect.Parameter.empty else repr(p.default),
            )
            for name, p in signature.parameters.items()
        ]
        init = griffe.Function("__init__", parent=cls, parameters=griffe.Parameters(*parameters),
                               returns="None")
        cls.set_member("__init__", init)
