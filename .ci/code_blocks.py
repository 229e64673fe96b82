"""Writes the ```python blocks of README.md and docs/ as modules, one per page, for mypy.

A page's blocks run in order in one namespace (tests/test_docs.py), so they
are written into one file each. Usage: python .ci/code_blocks.py OUT_DIR
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        if blocks:
            name = re.sub(r"\W", "_", str(page.relative_to(ROOT)).removesuffix(".md"))
            (out / f"{name}.py").write_text("\n\n".join(blocks))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
