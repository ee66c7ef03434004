"""Layer-wise Linear Mode Connectivity (Adilova et al., ICLR 2024): the reusable logic behind the notebooks.

Importing the package applies the torchvision compatibility step (see _torchvision_compat) when, and only when,
torchvision's native extension cannot load into the installed torch.
"""

from llmc_utils import _torchvision_compat

TORCHVISION_COMPAT_APPLIED = _torchvision_compat.install()

__version__ = "0.1.0"
