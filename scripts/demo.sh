#!/usr/bin/env bash
# The demo pipeline on bundled data: simulate -> preprocess -> train -> analyze (a few minutes on a CPU).
# Usage: scripts/demo.sh [OUTDIR]   (needs `emgroup` on PATH; `make demo` sets that up)
set -euo pipefail
out=${1:-demo}
pdb_open=$(python -c "import importlib.resources as r; print(r.files('emgroup.demo_data') / 'adk_open.pdb')")

# 3,000 adenylate-kinase particles, 40x40 px at 2.5 Å/px, a closed<->open continuum (truth in
# rlnEmgroupTrueConformation), uniform in-plane rotation, 1 px shifts, CTF, SNR 0.1.
emgroup simulate -o "$out/simulated" --pdb2 "$pdb_open" -n 3000 --box 40 --apix 2.5 \
    --rotation uniform --shift-sigma 1 --ctf --defocus 1.0-2.5 --snr 0.1 --seed 0
# Normalize (RELION convention) and hold out 10% for validation.
emgroup preprocess "$out/simulated/particles.star" -o "$out/preprocessed" --val-fraction 0.1
