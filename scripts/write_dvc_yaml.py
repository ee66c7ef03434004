"""Write dvc.yaml from the stage registry (llmc_utils.pipeline.dvc_yaml), or check that it is current.

python scripts/write_dvc_yaml.py           # rewrites dvc.yaml
python scripts/write_dvc_yaml.py --check   # exit 1, naming the first difference, when dvc.yaml is stale
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

from llmc_utils.pipeline.dvc_yaml import render  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare dvc.yaml with what the specs give")
    args = parser.parse_args(argv)
    wanted, path = render(), ROOT / "dvc.yaml"
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current == wanted:
            print("dvc.yaml is current")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), "dvc.yaml", "from the specs", lineterm=""
        )
        print("dvc.yaml is stale: run python scripts/write_dvc_yaml.py\n" + "\n".join(list(diff)[:40]), file=sys.stderr)
        return 1
    path.write_text(wanted)
    print("wrote dvc.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
