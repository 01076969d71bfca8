#!/usr/bin/env bash
# The demo pipeline on bundled data: simulate -> preprocess -> train -> analyze (a few minutes on a CPU).
# Usage: scripts/demo.sh [OUTDIR]   (needs `emgroup` on PATH; `make demo` sets that up)
set -euo pipefail
out=${1:-demo}
pdb_open=$(python -c "import importlib.resources as r; print(r.files('emgroup.demo_data') / 'adk_open.pdb')")

# 2,000 adenylate-kinase particles, 40x40 px at 2.5 Å/px, a closed<->open continuum (truth in
# rlnEmgroupTrueConformation), uniform in-plane rotation, 1 px shifts, CTF, SNR 0.5.
emgroup simulate -o "$out/simulated" --pdb2 "$pdb_open" -n 2000 --box 40 --apix 2.5 \
    --rotation uniform --shift-sigma 1 --ctf --defocus 1.0-2.5 --snr 0.5 --seed 0
# Normalize (RELION convention) and hold out 10% for validation.
emgroup preprocess "$out/simulated/particles.star" -o "$out/preprocessed" --val-fraction 0.1
# spatial-VAE: one conformational latent besides rotation and translation (a small generator for a CPU;
# about 3 minutes on 2 cores, enough to learn the shifts: translation correlation ~0.6 in metrics.json; the
# rotation and the conformation need the full model and a GPU, see docs/benchmarks.md).
emgroup train "$out/preprocessed/particles.star" -o "$out/run" --force --model spatial --z-dim 1 \
    --hidden 128 --epochs 40 --batch-size 100 --lr 1e-3 --seed 0
# Poses, clusters, class averages, denoised particles and figures for RELION/cryoSPARC; metrics.json
# compares them with the simulated truth.
emgroup analyze "$out/run" -o "$out/analysis" --clusters 2
echo "demo finished: open $out/analysis/figures/*.png; $out/analysis/particles.star goes into RELION"
