#!/usr/bin/env bash
# Idempotent setup on a fresh machine: a local .venv with the pinned CPU torch 2.13.0 + torchvision 0.28.0 and this
# package (with test extras), the Fashion-MNIST data set, and DVC's offline configuration. Safe to rerun: pip runs
# again only when pyproject.toml changed, apt only when the data set is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.llmc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing Python packages into .venv (torch==2.13.0, torchvision==0.28.0, ...)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
    touch "$stamp"
fi

data_home=${LLMC_DATA_HOME:-$HOME/.cache/llmc_data}
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] &&
   [ ! -f "$data_home/FashionMNIST/raw/t10k-labels-idx1-ubyte" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== installing Debian package dataset-fashion-mnist"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
    elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        echo "== installing Debian package dataset-fashion-mnist (sudo)"
        sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
    else
        echo "== apt-get unavailable or not root: downloading Fashion-MNIST with torchvision into $data_home instead"
        .venv/bin/python -c "import llmc_utils.core.data as d; d.download('fashion_mnist')"
    fi
fi

# DVC must work offline: no analytics, no update checks (also committed in .dvc/config; this keeps it true).
.venv/bin/dvc config core.analytics false
.venv/bin/dvc config core.check_update false
echo "== setup done: . .venv/bin/activate"
