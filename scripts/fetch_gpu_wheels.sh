#!/usr/bin/env bash
# Download the cp312 wheels that scripts/gpu_check.sh installs on a GPU machine without network
# (Python 3.12 with torch/torchaudio 2.11 preinstalled; no fairseq, hydra, soundfile, faiss, editdistance).
# Run here, in the repository root; the wheels land in .whl/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl ve-fairseq==0.12.3 hydra-core==1.3.8 omegaconf==2.3.1 bitarray==3.12.3 \
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 faiss-cpu==1.15.1 editdistance==0.8.1
# antlr4 4.9.3 (what omegaconf 2.3 needs) is published as an sdist only: build its pure-Python wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
