#!/usr/bin/env bash
# LRA ListOps at LRA's own length on one GPU: configs/lra_listops.py:small (expressions of 501-1999 tokens,
# padded to 2,000; 2 layers of width 64, batch 32), BSA `asymmetric` against learned absolute positions
# (LRA's baseline), seed 0 each (studies/listops_lra_length.py's variants), sized to LRA_GPU_MINUTES
# (default 10) of the device:
#   1. the data, LRA's recipe (96k/2k/2k expressions), built into TFDS's directory unless it is there
#      (about 16 minutes of one CPU core, once, outside the budget: build it beforehand where CPU time is
#      free and set TFDS_DATA_DIR);
#   2. each variant trained afresh for LRA_GPU_PROBE steps (default 40), its time per step the median
#      logged interval after the first (as study.py's `seconds per step`); this probe comes on top of the
#      budget;
#   3. the study at the most steps of 100 that fit 80% of the budget (the rest: compiling, evaluating), at
#      most LRA's 5,000, with a fifth of them warming up as `:small`'s 1,000 of 5,000, in
#      runs/lra_gpu/study_<steps> (an interrupted one resumes).
# Writes runs/lra_gpu/report.txt (the study's summary.md at its end) and each study's log beside it.
#
#     bash benchmarks/lra_gpu.sh
#
# Without a GPU it stops (exit 3) unless LRA_GPU_ALLOW_CPU=1 (the tests run it so at a tiny size, with
# LRA_GPU_OVERRIDES: --config.<field>=... flags for every run).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${LRA_GPU_OUT:-runs/lra_gpu}
minutes=${LRA_GPU_MINUTES:-10}
probe=${LRA_GPU_PROBE:-40}
read -r -a overrides <<< "${LRA_GPU_OVERRIDES:-}"
platform=$("$python" -c "import jax; print(jax.default_backend())")
if [[ "$platform" != "gpu" && "${LRA_GPU_ALLOW_CPU:-0}" != "1" ]]; then
  echo "no GPU here (jax's backend: $platform): nothing trained" >&2
  exit 3
fi
config=configs/lra_listops.py:small
study=(--config "$config" --variants studies/listops_lra_length.py --variant "BSA asymmetric" --seeds 0
       --attacks reflect "${overrides[@]}")
rm -rf "$out/probe"
mkdir -p "$out"
{
  echo "== $("$python" -c "import jax; print(jax.devices()[0].device_kind, 'jax', jax.__version__)")"
  echo "== 1-2. the data, and $probe steps of each variant"
  "$python" study.py "${study[@]}" --workdir "$out/probe" --config.train.num_steps="$probe" \
      --config.train.log_every=$((probe / 4 > 0 ? probe / 4 : 1)) --config.optimizer.warmup_steps=1 \
      > "$out/probe.log" 2>&1 || { tail -n 5 "$out/probe.log"; exit 1; }
  steps=$("$python" - "$out/probe" "$minutes" <<'EOF'
import pathlib, statistics, sys
from bilateral_jax import metric_writer
root, minutes = pathlib.Path(sys.argv[1]), float(sys.argv[2])
rates = {run.parent.name: [row["steps_per_s"] for row in metric_writer.read(run) if "steps_per_s" in row][1:]
         for run in sorted(root.glob("*/seed_0"))}
seconds = {name: statistics.median(1 / rate for rate in each) for name, each in rates.items()}
for name, step in seconds.items():
  print(f"{name:<20} {step * 1e3:9.1f} ms a step", file=sys.stderr)
fit = int(0.8 * minutes * 60 / sum(seconds.values())) // 100 * 100
print(max(100, min(5_000, fit)))
EOF
)
  echo "== 3. the study at $steps steps (about $minutes minutes)"
  "$python" study.py "${study[@]}" --workdir "$out/study_$steps" --config.train.num_steps="$steps" \
      --config.optimizer.warmup_steps=$((steps / 5)) > "$out/study.log" 2>&1 || { tail -n 5 "$out/study.log"; exit 1; }
  cat "$out/study_$steps/summary.md"
} 2>&1 | grep -v "^[WI][0-9]\{4\}" | tee "$out/report.txt"
