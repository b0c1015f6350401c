#!/usr/bin/env bash
# The reconstruction study of bench/RESULTS.md: bench/recon.py on held-out phantoms, parallel and cone beam, sparse
# (20) and full (90) views, with the random, toolkit, 3dgr-ct, medgmae and medgmae-dense initialisations.
#   bash bench/recon_study.sh MODEL_PT OUT_DIR ITERATIONS CASE...      CASE = geometry:views:phantom_seed
#   e.g. bash bench/recon_study.sh runs/recon_bench_model/model.pt runs/recon_study 600 parallel:20:1000 cone:90:1001
# MODEL_PT comes from bench/pretrain_for_recon.sh ("none": no MedGMAE starts, with INITS of the others). Each case writes OUT_DIR/<case>.json and .png; summarise them with
#   python bench/recon_summary.py OUT_DIR/*.json
# One torch thread per case unless THREADS=N (run several cases side by side on a multi-core machine). INITS="a b" runs only those
# initialisations (written to <case>_<first init>.json; the summary merges the files of one case). EVAL_EVERY=N
# evaluates the PSNR every N iterations (default 10); PARTIAL_EVERY=N writes the JSON every N iterations of a run
# (marked incomplete), so a long run that is stopped still leaves its curve so far. HOLDOUT=N leaves N views out of
# the fit (recon.holdout; the starts use the FBP of the other views); summarise with bench/recon_holdout_summary.py.
# TV=W adds a total-variation term of weight W to every start; TEXTURE=1 gives the phantom its 10-15 HU texture.
# SET="key=value ..." passes reconstruction settings to every start (bench/recon.py --set), e.g. SET=split_rule=moments.
# OVERLAP=N sets the zero-shot start's sliding-window overlap (model voxels; default 16). SIMULATE=same measures the
# phantom of the reconstruction grid instead of a 2x finer one (an inverse crime: a diagnostic only). N3DGR=N places N
# Gaussians in the 3DGR-CT starts instead of its published density (bench/recon.py --num-gaussians-3dgr), SIGMA3DGR=S
# sets their scale rule's numerator (--ini-sigma-3dgr).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 out=$2 iters=$3
shift 3
mkdir -p "$out"
for case in "$@"; do
    IFS=: read -r geom views seed <<<"$case"
    name="${geom}${views}_seed${seed}"
    only=()
    if [[ -n "${INITS:-}" ]]; then
        read -r -a inits <<<"$INITS"
        only=(--only "${inits[@]}")
        name="${name}_${inits[0]}"
    fi
    medgmae=(--compare-medgmae --checkpoint "$model")
    [[ $model == none ]] && medgmae=()
    n3dgr=()
    [[ -n "${N3DGR:-}" ]] && n3dgr=(--num-gaussians-3dgr "$N3DGR")
    [[ -n "${SIGMA3DGR:-}" ]] && n3dgr+=(--ini-sigma-3dgr "$SIGMA3DGR")
    settings=()
    [[ -n "${SET:-}" ]] && { read -r -a pairs <<<"$SET"; settings=(--set "${pairs[@]}"); }
    OMP_WAIT_POLICY=PASSIVE python bench/recon.py --size 32 64 64 --voxel 6 4 4 --geometry "$geom" --views "$views" \
        --iterations "$iters" --eval-every "${EVAL_EVERY:-10}" --holdout-views "${HOLDOUT:-0}" --overlap "${OVERLAP:-16}" --simulate-grid "${SIMULATE:-finer}" --tv "${TV:-0}" ${TEXTURE:+--texture} --partial-every "${PARTIAL_EVERY:-0}" --seed "$seed" --threads "${THREADS:-1}" --device cpu "${medgmae[@]}" \
        "${only[@]}" "${n3dgr[@]}" "${settings[@]}" --json "$out/$name.json" --png "$out/$name.png" > "$out/$name.log" 2>&1
    echo "$name done"
done
