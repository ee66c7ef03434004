"""Make `import torchvision` work on the CPU torch wheel (upstream pytorch/vision#9085).

torchvision 0.28.0 from PyPI ships a native extension (_C.so) built against another torch build. On the local CPU wheel
of torch 2.13.0 that extension cannot load, and torchvision's Python side then dies at import time: it registers fake
(meta) kernels for ``torchvision::nms`` and ``torchvision::qnms``, operators whose schemas only the extension defines.
Defining those two schemas in a "torchvision" library FRAGMENT before the first import is enough for models,
transforms and datasets. ``torchvision.ops`` and ``torchvision.io`` stay unavailable; this project needs neither.

We do it only when the native extension really fails to load, so a matching torch/torchvision pair is left untouched.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fragment = None  # keep a reference: a torch.library.Library unregisters its definitions when garbage-collected


def native_extension_loads() -> bool:
    """True when torchvision is absent or its compiled extension loads into this torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True
    extension = next(Path(spec.origin).parent.glob("_C*.so"), None) or next(
        Path(spec.origin).parent.glob("_C*.pyd"), None
    )
    if extension is None:
        return False
    try:
        torch.ops.load_library(str(extension))
        return True
    except (OSError, RuntimeError):
        return False


def install() -> bool:
    """Define the missing operator schemas if needed. Returns True when the compatibility step was applied."""
    global _fragment
    if _fragment is not None or "torchvision" in sys.modules or native_extension_loads():
        return _fragment is not None
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _fragment.define(schema)
    return True
