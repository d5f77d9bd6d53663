#!/usr/bin/env bash
# The GPU benchmarks in one go (the numbers in docs/benchmarks.md), most important first:
# training throughput of DiT-B/2 at batch 256 with each speed option, the smaller presets with and
# without compile, FID-sampling throughput, then the test suite with CUDA as the default device.
# Results land in benchmarks/results/*_cuda.json (and in $OUT when set, e.g. on a lent machine).
#
#   bash benchmarks/gpu.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu_info.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu_info.txt"

run() {  # run LIMIT_SECONDS LOG_NAME command...
  local limit=$1 log=$2; shift 2
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$log.log"
}
run 220 throughput_dit_b2 python3 benchmarks/throughput.py --device cuda --models DiT-B/2 --batch-size 256 \
    --variants default,compile,adamw-fused,fp32 --steps 10 --warmup 3 --name throughput_cuda
run 110 throughput_small python3 benchmarks/throughput.py --device cuda --models DiT-S/4,quickstart --batch-size 256 \
    --variants default,compile --steps 10 --warmup 3 --name throughput_cuda_small
run 130 sampling python3 benchmarks/sampling_speed.py --device cuda --models DiT-B/2 --batch-size 256 --chunks 4 \
    --compile off,on --cfg 1.0,1.5
cp benchmarks/results/*_cuda*.json "$OUT/" 2>/dev/null
run 90 tests python3 -m pytest -q -n 8 -p no:cacheprovider
