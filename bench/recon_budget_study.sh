#!/usr/bin/env bash
# The Gaussian budget against volume size, without inverse crime: bench/recon.py's `toolkit` start (FBP-gradient
# initialisation, toolkit optimiser) at several initial budgets, on a held-out phantom of the pre-training bundle's
# default size (112 x 128 x 160 voxels of 1.5 mm, 2.3 M voxels), simulated on the 2x finer grid with Poisson noise
# (1e5 photons per detector pixel). One run after another in one process of 2 torch threads.
#   bash bench/recon_budget_study.sh OUT_DIR ITERATIONS GEOMETRY:VIEWS BUDGET...
#   e.g. bash bench/recon_budget_study.sh runs/recon_budget_study 400 parallel:60 20000 60000 150000 286720
# SIZE="D H W" and VOXEL="SZ SY SX" (mm) choose another phantom size (default "112 128 160" and "1.5 1.5 1.5");
# EVAL_EVERY (default 25) sets the PSNR evaluation interval, PARTIAL_EVERY=N writes the JSON every N iterations (a
# long run stopped early keeps its curve); TV=W adds a total-variation term of weight W (bench/recon.py --tv);
# SET="key=value ..." passes reconstruction settings (bench/recon.py --set), e.g. SET=coarse_iterations=40.
# Each budget writes OUT_DIR/<geometry><views>_<budget>.json; summarise with
#   python bench/recon_budget_summary.py OUT_DIR/*.json --png OUT_DIR/budget.png
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 4 ]]; then
    echo "usage: bash bench/recon_budget_study.sh OUT_DIR ITERATIONS GEOMETRY:VIEWS BUDGET..." >&2
    exit 2
fi
out=$1 iters=$2
IFS=: read -r geom views <<<"$3"
shift 3
mkdir -p "$out"
settings=()
[[ -n "${SET:-}" ]] && { read -r -a pairs <<<"$SET"; settings=(--set "${pairs[@]}"); }
for n in "$@"; do
    name="${geom}${views}_${n}"
    # shellcheck disable=SC2086  # SIZE and VOXEL are three numbers each
    OMP_WAIT_POLICY=PASSIVE python bench/recon.py --size ${SIZE:-112 128 160} --voxel ${VOXEL:-1.5 1.5 1.5} --geometry "$geom" \
        --views "$views" --iterations "$iters" --eval-every "${EVAL_EVERY:-25}" --only toolkit --num-gaussians "$n" \
        --seed "${SEED:-1000}" --partial-every "${PARTIAL_EVERY:-0}" --tv "${TV:-0}" --threads 2 --device cpu "${settings[@]}" --json "$out/$name.json" > "$out/$name.log" 2>&1
    echo "$name done"
done
