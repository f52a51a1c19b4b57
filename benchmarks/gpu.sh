#!/usr/bin/env bash
# The CUDA path, checked and timed on a GPU machine (benchmarks/RESULTS.md, "GPU").
#
#   benchmarks/gpu.sh OUTDIR tests      # the suite on the GPU (notebooks and the CPU-memory tests aside)
#   benchmarks/gpu.sh OUTDIR scale      # bench_scale.py, lmm_jax alone, empty compilation cache
#   benchmarks/gpu.sh OUTDIR bootstrap  # bench_bootstrap.py, lmm_jax alone, larger replicate counts
#
# Needs jax with CUDA (pip install -e ".[cuda]"); runs from a checkout without installing it.
# Several parts may be named at once; each writes its log and JSON under OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:?usage: benchmarks/gpu.sh OUTDIR [tests] [scale] [bootstrap]}")
shift
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false            # several processes (pytest workers) share the GPU
export LMM_JAX_CACHE_DIR="${LMM_JAX_CACHE_DIR:-$(mktemp -d)}"   # empty: first calls compile
py=${PYTHON:-python3}

{
  date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $py -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} 2>&1 | tee "$out/info.txt"

for part in "$@"; do
  case $part in
    tests)
      timeout "${TESTS_TIMEOUT:-330}" $py -m pytest -q -p no:cacheprovider -n "${WORKERS:-12}" --dist loadgroup \
        --ignore tests/test_notebooks.py --ignore tests/test_cpu_memory.py --durations 15 -rfE \
        --junitxml "$out/tests.xml" 2>&1 | tee "$out/tests.log" ;;
    scale)
      $py benchmarks/bench_scale.py --peers "" --no-lme4 --reps 5 --json "$out/scale_gpu.json" 2>&1 \
        | tee "$out/scale.log" ;;
    bootstrap)
      $py benchmarks/bench_bootstrap.py --peers "" --repeats 5 --no-newton \
        --n "sleepstudy=${BOOT_N:-10000},crossed 50x20=1000,Penicillin=1000" \
        --out "$out/bootstrap_gpu.json" 2>&1 | tee "$out/bootstrap.log"
      $py benchmarks/bench_bootstrap.py --peers "" --repeats 3 --no-newton --cases sleepstudy \
        --n "sleepstudy=100000" ${BIG_CHUNK:+--chunk-size $BIG_CHUNK} \
        --out "$out/bootstrap_gpu_100k.json" 2>&1 | tee "$out/bootstrap_100k.log" ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
