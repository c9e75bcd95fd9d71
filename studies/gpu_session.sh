#!/usr/bin/env bash
# One GPU lease, prepared ahead, as the device tool runs it (one command of at most 10 minutes):
#
#   0. studies/train_step_profile.py: the operators of a training step at the recipes' batch, video and twin.
#   1. The embedded v3 candidates: for each recipe below, the video model and its image twin, all four side by
#      side on the one GPU (the models are tiny; rendering clips on the CPU cores is what bounds them). Their
#      --steps come from a short calibration of the same four commands, so that training ends within
#      TRAIN_SECONDS; each run is the command it would be on a CPU plus --device cuda --workers N.
#   2. benchmarks/gpu_smoke.py, alone on the GPU: every family's tiny configuration through every path in bf16
#      on CUDA, and the Triton matching kernel against torch and a bare bf16 q @ k.T at the CogVideoX-2B and
#      5B shapes.
#
# Everything is fitted inside SESSION_SECONDS from the start (training is shortened, never the smoke run).
#
# usage: bash studies/gpu_session.sh OUT_DIR [TRAIN_SECONDS] [SESSION_SECONDS]
# Writes OUT_DIR/{session.log, step_profile.json, step_profile-twin.json, gpu_smoke.json} and one
# OUT_DIR/<run>.tar per trained model (the
# model directory with its training.json; <run>-partial.tar holds the last checkpoint of a run cut short).
# At most 8 files, as the device tool sends back. TRAIN_ARGS (environment) replaces the shared training options
# (device, batch, frames), e.g. for a dry run of this script on a CPU.
set -uo pipefail
out=${1:?usage: bash studies/gpu_session.sh OUT_DIR [TRAIN_SECONDS] [SESSION_SECONDS]}
train_seconds=${2:-330}
deadline=$(( $(date +%s) + ${3:-570} ))
smoke_seconds=120
mkdir -p "$out"
work=$(mktemp -d)
log="$out/session.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One CPU thread a training process: four processes with a thread pool of one thread a core each, next to the
# render workers, spend their time waiting on each other (on 2 cores, four tiny runs side by side took 26-33 s
# with torch's default threads and 3.5-3.8 s with one thread each; see results/embedded/gpu-v3/README.md).
cores=$(nproc)  # before the export below: nproc honours OMP_NUM_THREADS
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

read -ra step_args <<<"${TRAIN_ARGS:---device cuda --batch 32 --sample-frames 8}"
common=("${step_args[@]}" --checkpoint-minutes 1)
# The CPU screening's best row (results/embedded/long_run.md, 2026-12-05: the first video model to train below
# its twin), as screened and with the 8 blocks of the other screening winner.
recipe_names=(v3-masked-anchor v3-masked-anchor-8)
declare -A recipes=([v3-masked-anchor]="--mask-patches 0.75 --anchor-clean 0.5"
                    [v3-masked-anchor-8]="--mask-patches 0.75 --anchor-clean 0.5 --layers 8")
runs=()
for recipe in "${recipe_names[@]}"; do runs+=("$recipe-video" "$recipe-image"); done
workers=$(( (cores - ${#runs[@]}) / ${#runs[@]} ))
(( workers < 1 )) && workers=1

left() { echo $(( deadline - $(date +%s) )); }

train_command() {  # run-name steps root -> the train-tiny command line
    local run=$1 steps=$2 root=$3 recipe=${1%-*} kind=${1##*-} twin=""
    [[ $kind == image ]] && twin=--image-twin
    echo "python3 -m difftrack.cli train-tiny --out $root/$run --run-dir $root/$run-ckpt --steps $steps" \
         "${common[*]} --workers $workers ${recipes[$recipe]} $twin"
}

train_all() {  # steps root time-limit: the four runs side by side; fails if any fails
    local steps=$1 root=$2 limit=$3 pids=() status=0
    for run in "${runs[@]}"; do
        echo "$(date +%T) $(train_command "$run" "$steps" "$root")" >>"$log"
        timeout "$limit" $(train_command "$run" "$steps" "$root") >"$root/$run.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    return $status
}

echo "$(date +%T) start: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)," \
     "$cores cores, torch/diffusers/transformers $(python3 -c 'import torch, diffusers, transformers
print(torch.__version__, diffusers.__version__, transformers.__version__)' 2>&1)" >>"$log"
# Where a step's time goes, before anything is trained (the first lease found 0.3-0.4 s a step unexplained).
for twin in "" --image-twin; do
    timeout 120 python3 studies/train_step_profile.py "${step_args[@]}" $twin \
        --out "$out/step_profile${twin:+-twin}.json" >>"$log" 2>&1 || echo "step profile exit $?" >>"$log"
done
mkdir -p "$work/calibration" "$work/runs"
steps=0
if train_all 40 "$work/calibration" 150; then
    # Seconds a step with all four running: the slowest run's mean over steps 10-40 (workers warm by then),
    # with a fifth to spare: on 2026-12-04 the masked runs slowed from 0.43 to 0.57 s a step after calibration.
    fit=$(( $(left) - smoke_seconds - 60 ))
    (( fit < train_seconds )) && train_seconds=$fit
    steps=$(python3 - "$work/calibration" "$train_seconds" "${runs[@]}" <<'EOF'
import json, sys
root, budget, runs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
per_step = max((h[39]["wall"] - h[9]["wall"]) / 30 for h in
               (json.load(open(f"{root}/{run}/training.json"))["history"] for run in runs))
print(max(50, int(0.8 * budget / per_step) // 50 * 50))
EOF
)
    echo "$(date +%T) calibration: $steps steps fit $train_seconds s; $workers workers a run" >>"$log"
    train_all "$steps" "$work/runs" $(( $(left) - smoke_seconds - 15 ))
    echo "$(date +%T) training exit $?" >>"$log"
else
    echo "$(date +%T) calibration failed" >>"$log"
    for f in "$work"/calibration/*.log; do { echo "== $f"; tail -n 5 "$f"; } >>"$log"; done
fi
for run in "${runs[@]}"; do
    [[ -f $work/runs/$run.log ]] || continue
    { echo "== $run"; tr '\r' '\n' <"$work/runs/$run.log" | grep -v '^\s*$' | tail -n 4; } >>"$log"
    if [[ -f $work/runs/$run/training.json ]]; then
        tar -C "$work/runs" -cf "$out/$run.tar" "$run"
    elif [[ -d $work/runs/$run-ckpt/checkpoint ]]; then
        # Cut short: its last checkpoint, weights only (with the optimiser state it would pass the device tool's
        # 16 MiB a file), so it can be evaluated but not resumed.
        rm -f "$work/runs/$run-ckpt/checkpoint/optimizer.pt"
        tar -C "$work/runs" -cf "$out/$run-partial.tar" "$run-ckpt/checkpoint"
    fi
done
echo "$(date +%T) smoke run, $(left) s left" >>"$log"
timeout $(( $(left) > 20 ? $(left) - 5 : 15 )) python3 benchmarks/gpu_smoke.py --out "$out/gpu_smoke.json" >>"$log" 2>&1 \
    || echo "gpu_smoke exit $?" >>"$log"
echo "$(date +%T) done" >>"$log"
