#!/usr/bin/env bash
# The GPU proof (issue 19): training samples/s with the loader in the loop and AMP, the val MACE after
# each epoch, and test MACE beside identity, ORB, SIFT and ECC on the same pairs, on a lent CUDA
# machine, in one command of about 4 minutes (at most 5) with no registry access there; also the
# cuDNN new-shape probe and train() on 1 vs 4 CPU processes (gloo; one GPU allows no NCCL pair).
#
#   bench/gpu_proof.sh prepare [COCO_ROOT]   # here, with network: wheels + images into ignored .gpu/
#   bench/gpu_proof.sh run [MINUTES]         # there (carry .gpu): install from .gpu, bench, recipe (1.25 min)
#
# `prepare` downloads, for the GPU image's Python 3.12, the wheels of what homogen's training path
# imports and that image lacks (zarr, numcodecs, pydantic, kornia, simplejpeg, pycocotools, filelock 4, ...),
# builds homogen's own wheel, and copies the COCO images (default ../shared/data/coco-mini, 128
# photographs) into .gpu/: about 45 MiB, under the 64 MiB a call may carry. The folder must be
# ignored by git (.git/info/exclude: /.gpu/). mlflow, Prefect and Dask are not needed: the proof
# calls the library (homogen.generate, homogen.model.train) directly.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  src="${2:-../shared/data/coco-mini}"
  rm -rf .gpu && mkdir -p .gpu/whl
  plat=""
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    plat="$plat --platform $p"
  done
  # Versions as resolved by `pip install -e .` here; the GPU image already has numpy, opencv, h5py,
  # fsspec, tqdm, xxhash, typer and torch.
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
    -d .gpu/whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
    pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    typing_extensions==4.16.0 kornia==0.9.0 kornia_rs==0.2.0 simplejpeg==1.9.0 pycocotools==2.0.11 \
    filelock==4.3.2 || exit 1
  rm -rf build  # setuptools reuses an in-tree build/: a stale one hides a package the list misses
  python -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl . || exit 1
  cp -r "$src" .gpu/coco
  du -sh .gpu
  ;;
run)
  minutes="${2:-1.25}"
  out="${OUT:-/tmp/gpu-proof}"
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  cd /tmp  # import the installed homogen, not the checkout's folders
  repo="$OLDPWD"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, homogen.model.train, homogen.generate; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || exit 1
  df -h /dev/shm | tail -1
  # DataLoader workers hand batches over in shared memory: if that fails here, run without workers.
  workers=12
  python3 -c "
import torch
from torch.utils.data import DataLoader
list(DataLoader([torch.zeros(2, 128, 128, dtype=torch.uint8)] * 4096, batch_size=1024, num_workers=2))
" || { echo "loader workers fail on this machine: running with 0"; workers=0; }
  # About 4 minutes in all (timeouts: 6.3 min at worst): throughput ~1 min, CPU processes ~0.5 min,
  # recipe ~2.5 min (generation on one core, 1.25 min of training, ECC on 300 test pairs) + install.
  echo "== throughput: in memory vs loader in the loop (persistent workers), float32 vs AMP bf16 + channels_last;"
  echo "   first step at new batch sizes with cuDNN's autotuner on and off"
  timeout 120 python3 "$repo/bench/train.py" --device cuda --batch-size 256 --steps 100 --warmup 20 \
    --num-workers "$workers" 2>&1 | tee "$out/throughput.log"
  echo "== DDP on CPU (gloo): train() on 1 and 4 processes side by side (16 cores: 4 threads each)"
  timeout 90 python3 "$repo/bench/train.py" --device cpu --processes 1 4 --width 0.125 2>&1 \
    | grep -v "Warning\|nn.parallel" | tee "$out/processes.log"
  echo "== recipe: generate from $(ls "$repo/.gpu/coco/train2017" | wc -l) COCO images, train ${minutes} min with AMP, test table"
  timeout 170 python3 "$repo/bench/train.py" --device cuda --recipe --source "$repo/.gpu/coco" --pairs 12000 \
    --minutes "$minutes" --batch-size 256 --step-size 8 --test-pairs 300 --num-workers "$workers" \
    --workdir /tmp/recipe 2>&1 | grep -v "it/s\]$" | tee "$out/recipe.log"
  ;;
*)
  sed -n 2,14p "$0"
  exit 2
  ;;
esac
