#!/usr/bin/env bash
# The GPU runs the open accuracy targets wait for, most wanted first, sized for a short lent GPU (about 8 minutes
# on an H100/H200, one command): the protein benchmark at full size (60 of the protocol's 100 epochs) and MNIST(U)
# TARGET-VAE P16 z2 (30 epochs), both read with the rotation statistic for uniform angles too; then the EMPIAR-scale
# rows of issue 19: TARGET-VAE P4/P8/P16 at 100 x 100 px, batch 100, the six-layer generator, in bf16 (throughput:
# 161,292 EMPIAR-10025 particles per epoch; an EMPIAR-10029 epoch is 10,000 particles) and fp32 (peak memory),
# with the public code's hot path (the reference row) beside them.
#
#     bash benchmarks/gpu_priority.sh [OUTDIR]   # from the repository root; JSON into OUTDIR [benchmarks/results]
set -euo pipefail
out=${1:-benchmarks/results}
python benchmarks/protein.py --device cuda --snrs snr0.1 --models spatial --epochs 60 \
    --output "$out/protein_full_snr0.1_60epochs_gpu.json"
python benchmarks/mnist.py --device cuda --datasets U --models target-P16-z2 --epochs 30 \
    --output "$out/mnist_full_U_target_P16_z2_30epochs_gpu.json"
for precision in bf16 fp32; do
    python benchmarks/throughput.py --devices cuda --sizes 100 --batch 100 --models target --option generator_layers=6 \
        --precision "$precision" --output "$out/throughput_gpu_100px_batch100_6layers_$precision.json"
done
