#!/usr/bin/env bash
# The GPU measurements docs/results.md marks "not measured", in one go on an H100/H200 with the project's CUDA
# wheels (README.md, "Install"); about 5 minutes:
#   1. the flash kernels (Triton, compiled) and every other path against the explicit ops, float32 at
#      full matmul precision (tests/test_flash.py, tests/test_folded.py);
#   2. the attention benchmark: standard attention against BSA's paths, bf16, N = 1K-16K, forward +
#      backward, time ratio and peak memory;
#   3. the default config's train step (standard / BSA x standard residual / GRC);
# and writes one report, runs/gpu_check/report.txt.
#
#     bash benchmarks/gpu_check.sh
#
# Without a GPU it stops (exit 3) unless GPU_CHECK_ALLOW_CPU=1 (the tests run it so, at a tiny size:
# GPU_CHECK_TESTS, GPU_CHECK_LENGTHS, GPU_CHECK_ROUNDS, GPU_CHECK_STEPS).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${GPU_CHECK_OUT:-runs/gpu_check}
platform=$("$python" -c "import jax; print(jax.default_backend())" 2>/dev/null)
if [[ "$platform" != "gpu" && "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]]; then
  echo "no GPU here (jax's backend: $platform): nothing measured" >&2
  exit 3
fi
mkdir -p "$out"
export JAX_DEFAULT_MATMUL_PRECISION=highest  # the explicit ops in float32 too: the kernels' reference
{
  echo "== $("$python" -c "import jax; print(jax.devices()[0].device_kind, 'jax', jax.__version__)")"
  echo "== 1. kernels against the explicit ops"
  JAX_PLATFORMS=$platform "$python" -m pytest -q -p no:xdist -p no:cacheprovider tests/test_flash.py \
      tests/test_folded.py -k "${GPU_CHECK_TESTS:-not lower_to_triton}" 2>&1 | tail -n 3
  echo "== 2. attention, forward + backward"
  "$python" benchmarks/attention.py --lengths ${GPU_CHECK_LENGTHS:-1024 2048 4096 8192 16384} \
      --rounds "${GPU_CHECK_ROUNDS:-5}" --out "$out/attention.json"
  echo "== 3. train step of the default config"
  "$python" benchmarks/train_step.py --rounds "${GPU_CHECK_ROUNDS:-5}" --steps "${GPU_CHECK_STEPS:-20}" \
      --out "$out/train_step.json"
} 2>&1 | grep -v "^[WI][0-9]\{4\}" | tee "$out/report.txt"
