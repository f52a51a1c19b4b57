"""Build and execute the notebooks from their cell sources (``notebooks/src_*.py``).

Each source module defines ``CELLS``: a list of ``("md", text)`` and
``("code", text)``. Usage (from the repository root)::

    python notebooks/_nb.py            # build and execute every notebook
    python notebooks/_nb.py 01 03      # only those whose name starts so

The executed ``.ipynb`` files, outputs included, are what the repository
ships; ``tests/test_notebooks.py`` executes them again so they cannot rot.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL = "python3"


def load_cells(src: Path) -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location(src.stem, src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CELLS


def build(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in load_cells(src):
        text = text.strip("\n")
        cell = nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> float:
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(HERE)}}).execute()
    return time.perf_counter() - t0


def main(prefixes: list[str]) -> None:
    for src in sorted(HERE.glob("src_*.py")):
        name = src.stem[len("src_"):]
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        nb = build(src)
        seconds = execute(nb)
        out = HERE / f"{name}.ipynb"
        nbformat.write(nb, out)
        print(f"{out.name}: executed in {seconds:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
