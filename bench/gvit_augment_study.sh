#!/usr/bin/env bash
# GViT with and without the bundle's training augmentation (flip, crop [0.5, 1]) on the default phantom-slice task:
# bench/gvit_compare.py once per seed, schedule and arm, two runs side by side, one thread each. Both arms of a seed
# use the same phantoms, split and initialisation; they differ only in --augment.
#   bash bench/gvit_augment_study.sh OUT_DIR SHORT_SEEDS LONG_SEEDS
#   e.g. bash bench/gvit_augment_study.sh runs/gvit_augment "0 1 2 3 4" "0 1 2"
# Short schedule: --epochs 8 8 6 (the default); long: --epochs 20 20 15. Each run writes
# OUT_DIR/<arm>_<schedule>_s<seed>.json (results.json of the run) and .log; summarise with
#   python bench/gvit_augment_summary.py OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -ne 3 ]]; then
    echo "usage: bash bench/gvit_augment_study.sh OUT_DIR SHORT_SEEDS LONG_SEEDS" >&2
    exit 2
fi
out=$1
mkdir -p "$out"
jobs=()
for seed in $2; do for arm in plain augment; do jobs+=("$arm short $seed"); done; done
for seed in $3; do for arm in plain augment; do jobs+=("$arm long $seed"); done; done
run_one() {
    local out=$1 arm=$2 sched=$3 seed=$4 name="$2_$3_s$4" flags=()
    [[ $arm == augment ]] && flags+=(--augment)
    [[ $sched == long ]] && flags+=(--epochs 20 20 15)
    [[ -f "$out/$name.json" ]] && { echo "$name kept"; return; }
    local work
    work=$(mktemp -d)
    OMP_NUM_THREADS=1 python bench/gvit_compare.py --out "$work" --seed "$seed" "${flags[@]}" > "$out/$name.log" 2>&1
    mv "$work/results.json" "$out/$name.json.tmp" && mv "$out/$name.json.tmp" "$out/$name.json"
    rm -rf "$work"
    echo "$name done"
}
export -f run_one
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c 'run_one "$0" $1 $2 $3' "$out"
