#!/usr/bin/env bash
# The GPU runs the open accuracy targets wait for, most wanted first, sized for a short lent GPU (about 8 minutes
# on an H100/H200, one command): the protein benchmark at full size (60 of the protocol's 100 epochs) and MNIST(U)
# TARGET-VAE P16 z2 (30 epochs), both read with the rotation statistic for uniform angles too.
#
#     bash benchmarks/gpu_priority.sh [OUTDIR]   # from the repository root; JSON into OUTDIR [benchmarks/results]
set -euo pipefail
out=${1:-benchmarks/results}
python benchmarks/protein.py --device cuda --snrs snr0.1 --models spatial --epochs 60 \
    --output "$out/protein_full_snr0.1_60epochs_gpu.json"
python benchmarks/mnist.py --device cuda --datasets U --models target-P16-z2 --epochs 30 \
    --output "$out/mnist_full_U_target_P16_z2_30epochs_gpu.json"
