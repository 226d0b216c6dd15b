#!/usr/bin/env bash
# Fill .wheels/ (ignored by git) with the wheels of bench/gpu_wheels.txt, for a GPU machine without
# registry access: pure-Python wheels once, pydantic's compiled core for CPython 3.10, 3.11 and 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .wheels
grep -v '^#' bench/gpu_wheels.txt | grep -v pydantic_core | xargs python -m pip download --no-deps -d .wheels
core="$(grep '^pydantic_core' bench/gpu_wheels.txt)"
for version in 3.10 3.11 3.12; do
  python -m pip download --no-deps --only-binary=:all: --python-version "$version" \
    --platform manylinux2014_x86_64 -d .wheels "$core"
done
du -sh .wheels
