#!/usr/bin/env bash
# Gaussian budget against volume size: the scan the pre-training bundle's next-step command simulates (a phantom of
# the bundle's default data, 60 parallel views, no noise), reconstructed from the fbp start with the default 20,000
# Gaussians and with more, through the command-line tool as a user runs it. Prints each run's closing summary.
#   bash bench/recon_budget.sh VOLUME OUT_DIR [ITERATIONS] [BUDGET...]
#   e.g. bash bench/recon_budget.sh runs/medgmae_pretrain/phantom/imagesTr/case_0008.nii.gz runs/recon_budget 100 20000 150000
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 || ! -f $1 ]]; then
    echo "usage: bash bench/recon_budget.sh VOLUME OUT_DIR [ITERATIONS] [BUDGET...] (VOLUME: a CT NIfTI in HU${1:+; not found: $1})" >&2
    exit 2
fi
volume=$1 out=$2 iters=${3:-100}
shift $(( $# < 3 ? $# : 3 ))
budgets=("$@")
[[ ${#budgets[@]} -gt 0 ]] || budgets=(20000 150000)
medgmae-recon simulate --volume "$volume" --geometry parallel --views 60 --out "$out/scan" > /dev/null
for n in "${budgets[@]}"; do
    echo "== --num-gaussians $n"
    medgmae-recon reconstruct --projections "$out/scan/projections.npy" --geometry "$out/scan/geometry.json" \
        --fbp "$out/scan/fbp.nii.gz" --init fbp --num-gaussians "$n" --iterations "$iters" --eval-every 50 \
        --reference "$out/scan/reference.nii.gz" --out "$out/fbp_$n" --no-progress
done
