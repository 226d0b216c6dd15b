#!/usr/bin/env bash
# The whole GPU check in one go, on a machine with a GPU (the device machine: PyTorch, transformers
# and accelerate installed, no registry access). From the repository root:
#
#   bench/gpu_wheels.sh            # once, where a registry is reachable: fills .wheels/ (ignored by git)
#   bench/gpu_check.sh             # on the GPU machine, with .wheels/ carried along; well under 10 minutes
#   bench/gpu_check.sh --tiny      # a dry run on any CPU (arguments go to bench/gpu_throughput.py)
#
# It records the environment, installs the carried wheels that are missing (--no-deps, from .wheels/
# only), makes the project importable without installing it (a shim of the `ieiw` namespace), runs
# bench/gpu_throughput.py on the real architectures and merges the figures into the throughput table.
# Everything it writes goes under $OUT (default /tmp/gpu-check): figures.json, throughputs.yaml, logs.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
python -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" | tee "$OUT/environment.txt"
python -m pip list 2>/dev/null >> "$OUT/environment.txt"
if [ -d .wheels ]; then
  for spec in $(cat bench/gpu_wheels.txt | grep -v '^#'); do
    module="${spec%%=*}"
    python -m pip show "$module" >/dev/null 2>&1 || \
      python -m pip install --no-deps --no-index --find-links .wheels "$spec" >> "$OUT/install.log" 2>&1 || \
      echo "could not install $spec from .wheels" | tee -a "$OUT/install.log"
  done
fi
SHIM="$OUT/shim/ieiw"
mkdir -p "$SHIM"
for layer in flows pipelines model quality storage; do ln -sfn "$ROOT/$layer" "$SHIM/$layer"; done
export PYTHONPATH="$OUT/shim${PYTHONPATH:+:$PYTHONPATH}"
cp flows/resources/throughputs.yaml "$OUT/throughputs.yaml"
timeout 540 python bench/gpu_throughput.py --json "$OUT/figures.json" --table "$OUT/throughputs.yaml" "$@" 2>&1 | tee "$OUT/gpu_throughput.log"
echo "figures: $OUT/figures.json; table: $OUT/throughputs.yaml (copy it to flows/resources/throughputs.yaml)"
