"""Stage prepare_data (notebook 00): the dataset named in the `data` section, read once from its raw files
(Fashion-MNIST from the Debian package or a folder, CIFAR-10 from its python batches) and written as one tensor file,
data/images.pt, that every later stage reads (llmc_utils.core.data)."""

from __future__ import annotations

from llmc_utils.core.data import DataConfig
from llmc_utils.stages.spec import RUNTIME, Figure, StageSpec

SPEC = StageSpec(
    name="prepare_data",
    section="data",
    notebook="00_data",
    config=DataConfig,
    reads=RUNTIME,
    outs=("data/images.pt",),
    figures=(Figure("data_samples", "Data: six training images per class of the default dataset."),),
)
