"""Re-execute notebooks in place with their committed (tiny) defaults, so the outputs nbval compares are current.

Run after editing a notebook or the code its checked cells print:  python scripts/refresh_notebooks.py [NN ...]
Notebooks run in file order, since each reads what the previous ones wrote to build/nbval/.
Image outputs of the tiny run are dropped before saving: they are not checked, would bloat every diff, and the real
figures live in figures/ and in the executed notebooks of `dvc repro` (reports/executed/).
"""

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

if __name__ == "__main__":
    os.environ["LLMC_QUIET"] = "1"  # no progress bars or warnings in stored outputs
    wanted = sys.argv[1:]
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if wanted and not any(path.name.startswith(w) for w in wanted):
            continue
        print(f"executing {path.name} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
        for cell in nb.cells:
            cell.metadata.pop("execution", None)  # timestamps: noise in every diff
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not any(k.startswith("image/") for k in o.get("data", {}))]
        nbformat.write(nb, path)
