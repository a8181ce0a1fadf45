#!/usr/bin/env bash
# benchmarks/accelerator_check.py on a lent machine that has JAX (CUDA), flax, optax, orbax and PyTorch but
# none of this project's data packages and no dataset (e.g. the H200 machines lent to some tasks).
#
#   bash benchmarks/gpu_check.sh prepare   # here, with internet to the package index: wheels -> .whl/,
#                                          # the CIFAR-10 folder tarball -> .gpu_data/ (both git-ignored)
#   bash benchmarks/gpu_check.sh run       # there, from the repository root (carry .whl and .gpu_data)
#
# `run` installs the wheels into /tmp/site (no index, no deps), then runs, saving under $OUT (default
# /tmp/gpu_check):
#   1. accelerator_check.txt, RESULTS_block.md   benchmarks/accelerator_check.py: the ResNet-50 bf16 training
#      step vs torch.compile + AMP + channels_last, the input pipeline at 224 px vs synthetic, the airbench94
#      speed run (its dated block, to paste into benchmarks/RESULTS.md)
#   2. speedrun95.txt, summary95.json   airbench95's recipe (:variant=95) on the folder (bf16), beside 10.4 s
# Each check has its own time limit; the whole run is meant to end inside 10 minutes on an H100 / H200.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10 ml-collections==1.1.0 tensorboardX==2.6.5
  pycocotools==2.0.11 portpicker dm-tree immutabledict simple-parsing docstring-parser tensorflow-metadata
  googleapis-common-protos termcolor toml importlib_resources)
DATA=.gpu_data/cifar10-jpg.tgz

case "${1:-}" in
prepare)
  for d in .whl .gpu_data; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude; done
  mkdir -p .whl .gpu_data
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}" || exit 1
  python3 -m pip wheel -q --no-deps -w .whl promise==2.3 || exit 1 # an sdist only: built here, pure Python
  cp ../shared/data/cifar10-jpg.tgz "$DATA" || exit 1
  du -sh .whl .gpu_data
  echo "then: run(command='bash benchmarks/gpu_check.sh run', carry=['.whl', '.gpu_data'], timeout_s=600)"
  ;;
run)
  OUT=${OUT:-/tmp/gpu_check}
  mkdir -p "$OUT"
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
  export PYTHONUNBUFFERED=1 TFDS_DATA_DIR=/tmp/tfds
  [ -f "$DATA" ] || DATA=../shared/data/cifar10-jpg.tgz
  nvidia-smi -L 2>&1 | tee "$OUT/devices.txt"
  python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)" 2>&1 | tee -a "$OUT/devices.txt"
  timeout 420 python3 benchmarks/accelerator_check.py --cifar10="$DATA" --timeout=200 \
    --results="$OUT/RESULTS_block.md" 2>&1 | tee "$OUT/accelerator_check.txt"
  timeout 110 python3 launch.py --config="experiments/classification/airbench_cifar.py:variant=95,path=$DATA" \
    --config.train.precision=bfloat16 --workdir=/tmp/airbench95_gpu 2>&1 | tee "$OUT/speedrun95.txt"
  cp /tmp/airbench95_gpu/summary.json "$OUT/summary95.json" 2>/dev/null
  ;;
*)
  echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2
  exit 2
  ;;
esac
