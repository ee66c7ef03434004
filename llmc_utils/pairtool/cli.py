"""The `llmc` console script: `llmc barriers ...` measures layer-wise barriers between two checkpoints of one's own.

Thin on purpose: it parses the command line and calls llmc_utils.pairtool.models.analyse_pair, where the logic lives
(and which Python users call directly). An input that cannot work stops with `llmc: error: <one line>` and exit code 2,
like argparse's own errors, before any heavy compute. docs/own_models.md is the user page.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

EPILOG = """examples:
  llmc barriers --model timm:resnet18 --a A.pt --b B.safetensors --data fashion_mnist --bn-reset 4 --out out/
  llmc barriers --model hf:gpt2-tiny/ --a A.safetensors --b B.safetensors --data text:corpus.txt --context 64
  llmc barriers --model llmc_utils.core.models:build_model --model-kwargs '{"name": "cnn", "in_channels": 1,
      "num_classes": 10, "image_size": 28}' --a A.pt --b B.pt --data fashion_mnist --align
outputs (in --out): barriers.csv, cumulative.csv, heatmap.png, cumulative.png, summary.json, report.md, report.html
and .llmc_barriers.json, the list of them: a rerun into the folder replaces them and removes those it does not write
a module.path:callable model spec imports that module and calls the callable: it runs that code
see docs/own_models.md"""


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    from llmc_utils.pairtool.data import SPECS
    from llmc_utils.pairtool.models import MODEL_SPECS, ORDERS, Options

    d = Options()
    top = argparse.ArgumentParser(
        prog="llmc",
        description="Layer-wise linear mode connectivity (Adilova et al., ICLR 2024) for any pair of checkpoints.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "barriers",
        help="layer-wise loss barriers between checkpoints A and B",
        description="Layer-wise, full and cumulative loss barriers between two checkpoints A and\n"
        "B of one architecture, written as tables, figures and a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to compare")
    what.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help=f"the architecture: {MODEL_SPECS} (this one imports and runs that code: name only code you trust)",
    )
    what.add_argument("--a", required=True, metavar="A", help="checkpoint A (.pt/.pth state dict or .safetensors)")
    what.add_argument("--b", required=True, metavar="B", help="checkpoint B (same architecture)")
    what.add_argument("--data", required=True, metavar="SPEC", help=f"evaluation data: {SPECS}")
    what.add_argument(
        "--model-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="keyword arguments of the model constructor (hf: config overrides), e.g. '{\"width\": 32}'",
    )
    how = p.add_argument_group("what to compute")
    how.add_argument(
        "--layers",
        nargs="+",
        metavar="NAME",
        help="logical layers (or glob patterns such as 'layer1.*') of the single-layer rows; default: all",
    )
    how.add_argument(
        "--alphas",
        nargs="+",
        type=float,
        default=list(d.alphas),
        metavar="A",
        help="interpolation weights of B (default: %(default)s)",
    )
    how.add_argument(
        "--bases",
        nargs="+",
        choices=("A", "B"),
        default=list(d.bases),
        help="average a layer into A and/or into B (default: %(default)s)",
    )
    how.add_argument(
        "--bn-reset",
        type=int,
        default=d.bn_reset,
        metavar="N",
        help="add the bn_reset variant: BatchNorm statistics re-estimated on N training batches",
    )
    how.add_argument(
        "--bn-reset-batch-size",
        type=int,
        default=d.bn_reset_batch_size,
        metavar="N",
        help="images (windows) per reset batch (default: %(default)s)",
    )
    how.add_argument(
        "--align",
        action="store_true",
        help="add the aligned variants: B permuted to A by weight matching (Git Re-Basin) first",
    )
    how.add_argument(
        "--orders",
        nargs="*",
        choices=ORDERS,
        default=list(d.orders),
        metavar="ORDER",
        help=f"cumulative orders, of {', '.join(ORDERS)} (default: all; none: no cumulative table)",
    )
    data = p.add_argument_group("data and runtime")
    data.add_argument(
        "--n-eval",
        type=int,
        default=d.n_eval,
        metavar="N",
        help="samples per split, a seeded subset; 0 = all (default: %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        metavar="PX",
        help="imagefolder: images resized to PX x PX (default: %(default)s)",
    )
    data.add_argument("--grayscale", action="store_true", help="imagefolder: one grey channel instead of RGB")
    data.add_argument(
        "--context", type=int, default=d.context, metavar="T", help="text: tokens per window (default: %(default)s)"
    )
    data.add_argument(
        "--batch-size", type=int, default=d.batch_size, metavar="N", help="evaluation batch size (default: %(default)s)"
    )
    data.add_argument("--seed", type=int, default=d.seed, help="subsets, reset batches, alignment (default: 0)")
    data.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    data.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        metavar="N",
        help="CPU threads of torch (default: torch's own; 1 is faster on a shared CPU)",
    )
    data.add_argument(
        "--out",
        default="llmc_barriers",
        metavar="DIR",
        help="output folder (default: %(default)s): "
        "new, empty, or an earlier run's; never one with files tracked by git or DVC",
    )
    data.add_argument("--force", action="store_true", help="write into an --out folder that holds other files too")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmc` console script; returns the exit code (2 for an input that cannot work)."""
    args = parser().parse_args(argv)
    from llmc_utils.pairtool.models import Options, PairInputError, analyse_pair

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    options.update(
        alphas=tuple(args.alphas), bases=tuple(args.bases), orders=tuple(args.orders), progress=not args.no_progress
    )
    try:
        analyse_pair(args.model, args.a, args.b, args.data, args.out, force=args.force, **options)
    except (PairInputError, PermissionError) as exc:  # PermissionError: io.OutputNotWritable while writing
        print(f"llmc: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
