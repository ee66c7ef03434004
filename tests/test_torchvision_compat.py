"""The torchvision compatibility step: applied only when the native extension fails, and then imports work."""

import subprocess
import sys

import llmc_utils
from llmc_utils import _torchvision_compat


def test_applied_exactly_when_extension_fails():
    assert llmc_utils.TORCHVISION_COMPAT_APPLIED == (not _torchvision_compat.native_extension_loads())


def test_models_transforms_datasets_import_after_llmc_utils():
    code = (
        "import llmc_utils, torch, torchvision\n"
        "from torchvision.models import resnet18\n"
        "from torchvision import transforms, datasets\n"
        "m = resnet18(num_classes=10).eval()\n"
        "print(m(torch.zeros(1, 3, 32, 32)).shape[-1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"


def test_plain_import_fails_without_the_step_on_this_wheel():
    # Documents why the step exists: without it, importing torchvision dies on the CPU wheel (pytorch/vision#9085).
    if _torchvision_compat.native_extension_loads():
        return  # a matching torch/torchvision pair: nothing to show
    out = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    assert out.returncode != 0 and "torchvision::nms" in out.stderr
