#!/usr/bin/env bash
# Density control of the toolkit preset, without inverse crime: bench/recon.py's `toolkit` start (FBP-gradient
# initialisation, toolkit optimiser) with the moment-matched split (split_rule=moments), the drawn clone/split rule
# (split_rule=sample, the default) and no density control (densify_from past the end), on held-out phantoms
# (default 64 x 96 x 96 voxels of 2.5 mm) simulated on the 2x finer grid with Poisson noise (1e5 photons per
# detector pixel). One run after another in one process of 2 torch threads.
#   bash bench/recon_density_study.sh OUT_DIR ITERATIONS BUDGET GEOMETRY:VIEWS...
#   e.g. bash bench/recon_density_study.sh runs/recon_density 400 default parallel:90 parallel:20 cone:20
# BUDGET: initial Gaussians ("default": the toolkit budget of the volume). SIZE="D H W" and VOXEL="SZ SY SX" (mm)
# choose another phantom size. Each scan and rule writes OUT_DIR/<geometry><views>_<budget>_<rule>.json; summarise
# with  python bench/recon_budget_summary.py OUT_DIR/*.json --png OUT_DIR/density.png
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 4 ]]; then
    echo "usage: bash bench/recon_density_study.sh OUT_DIR ITERATIONS BUDGET GEOMETRY:VIEWS..." >&2
    exit 2
fi
out=$1 iters=$2 budget=$3
shift 3
budget_flag=()
[[ $budget != default ]] && budget_flag=(--num-gaussians "$budget")
mkdir -p "$out"
declare -A rule_flags=([moments]="--set split_rule=moments" [sample]="--set split_rule=sample" [none]="--set densify_from=1000000000")
for scan in "$@"; do
    IFS=: read -r geom views <<<"$scan"
    for rule in moments sample none; do
        name="${geom}${views}_${budget}_${rule}"
        # shellcheck disable=SC2086  # SIZE and VOXEL are three numbers each; the rule's flags are words
        OMP_WAIT_POLICY=PASSIVE python bench/recon.py --size ${SIZE:-64 96 96} --voxel ${VOXEL:-2.5 2.5 2.5} \
            --geometry "$geom" --views "$views" --iterations "$iters" --eval-every "${EVAL_EVERY:-25}" --only toolkit \
            "${budget_flag[@]}" ${rule_flags[$rule]} --seed "${SEED:-1000}" --threads 2 --device cpu \
            --json "$out/$name.json" > "$out/$name.log" 2>&1
        echo "$name done"
    done
done
