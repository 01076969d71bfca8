"""Training and inference throughput (particles/s) and peak memory of every registered model, per image size.

Each row runs in a fresh process (so its peak memory is its own): a seeded model with its default options (TARGET-VAE
per group P4/P8/P16, kernel and padding at the paper's 28/50 and 8/50 of the box), synthetic seeded images in
[0, 1], one warm-up step, then timed training steps (loss, backward, Adam step) and inference (``encode``). TARGET-VAE
rows also split a training step into encoder forward, the rest of the forward (sample, generator, likelihood, KL)
and backward. The ``reference`` rows time a faithful re-implementation of the public TARGET-VAE code's hot path:
kernels rotated one rotation at a time, a direct channels-first convolution, Conv3d 1x1x1 layers and heads, a soft
Gumbel-softmax expectation over the cells, and the same generator (1024 Fourier features, 2 x 512, or as many layers
as ``--option generator_layers=N`` gives) computed layer by layer with every intermediate stored. The lifting
convolution alone is also timed both ways (direct and FFT) per device. Peak memory is the row's growth of peak
resident memory from the start of its measurement (imports, the model and the data excluded).

    python benchmarks/throughput.py [--quick] [--sizes 40 64 100] [--devices cpu cuda] [--batch N] [--threads 2]

Rows run with the glibc malloc settings the `emgroup` command sets for itself (emgroup.cli.main.MALLOC_ENV).

Writes benchmarks/results/throughput[_quick].json and prints a table.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, parse_options, write_results
from emgroup.cli.main import MALLOC_ENV

#: particles per batch: (quick, full) per device
BATCH = {"cpu": (4, 16), "cuda": (100, 100)}
TARGET_GROUPS = ("P4", "P8", "P16")


def rows(models: list[str]) -> list[tuple[str, dict]]:
    """(label, options) per benchmarked model: TARGET-VAE once per group, the reference at P8."""
    out = []
    for name in models:
        if name == "target":
            out += [(f"target {group}", {"model": "target", "group": group}) for group in TARGET_GROUPS]
            out.append(("reference target P8", {"model": "reference", "group": "P8"}))
        else:
            out.append((name, {"model": name}))
    out.append(("lifting conv P8 direct", {"model": "lifting", "group": "P8", "fft": False}))
    out.append(("lifting conv P8 FFT", {"model": "lifting", "group": "P8", "fft": True}))
    return out


def reference_target(box: int, rotations: int, device: str, generator_layers: int = 2):
    """The public TARGET-VAE hot path, for timing: returns ``step(images) -> loss`` and ``encode(images)``."""
    import torch
    import torch.nn.functional as F

    from emgroup.models.grids import coordinate_grid, pixel_size, transform_grid

    kernel, padding, channels, z_dim = round(0.56 * box), round(0.16 * box), 128, 2
    weight = torch.nn.Parameter(torch.randn(channels, 1, 1, kernel, kernel, device=device) / kernel)
    conv2 = torch.nn.Conv3d(channels, channels, 1)
    heads = torch.nn.ModuleList([torch.nn.Conv3d(channels, n, 1) for n in (1, 2, 2 * z_dim)])
    # the public generator: Fourier features of the coordinates, each stored, then Linear layers on them
    freq = torch.randn(2, 1024, device=device) / pixel_size(box)
    phase = 2 * math.pi * torch.rand(1024, device=device)
    coords_layer, latent_layer = torch.nn.Linear(1024, 512), torch.nn.Linear(z_dim, 512, bias=False)
    hidden = [torch.nn.LeakyReLU(0.2)]
    for _ in range(generator_layers - 1):
        hidden += [torch.nn.Linear(512, 512), torch.nn.LeakyReLU(0.2)]
    body = torch.nn.Sequential(*hidden, torch.nn.Linear(512, 1))
    modules = torch.nn.ModuleList([conv2, heads, coords_layer, latent_layer, body]).to(device)

    def generator(coords, z):
        h = coords_layer(torch.cos(coords @ freq + phase)) + latent_layer(z)[:, None]
        return body(h)[..., 0]

    grid = coordinate_grid(box, device)

    def rotated():
        out = []
        for i in range(rotations):  # one affine grid and grid_sample per rotation, as the public code does
            a = 2 * math.pi * i / rotations
            rot = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]], device=device)
            g = F.affine_grid(rot.expand(channels, 2, 3), (channels, 1, kernel, kernel), align_corners=False)
            out.append(F.grid_sample(weight[:, :, 0], g, align_corners=False))
        return torch.stack(out, 1).reshape(channels * rotations, 1, kernel, kernel)

    def encoder(images):
        h = F.conv2d(images[:, None], rotated(), padding=padding)
        h = F.leaky_relu(h.view(len(images), channels, rotations, *h.shape[-2:]))
        h = F.leaky_relu(conv2(h))
        return [head(h).flatten(2) for head in heads]

    def step(images):
        n = len(images)
        attn, theta, z = encoder(images)
        weights = F.gumbel_softmax(attn[:, 0], dim=-1)[:, :, None]  # soft sample over (r, t)
        theta = torch.bmm(theta, weights)[:, :, 0]
        z = torch.bmm(z, weights)[:, :, 0]
        coords = transform_grid(grid, theta[:, 0], torch.zeros(n, 2, device=device))
        output = generator(coords, z[:, :z_dim])
        return F.binary_cross_entropy_with_logits(output, images.flatten(1), reduction="sum") / n

    def encode(images):
        attn, theta, z = encoder(images)
        best = attn[:, 0].argmax(1)
        return theta[torch.arange(len(images)), :, best], z[torch.arange(len(images)), :, best]

    return [weight, *modules.parameters()], step, encode, encoder


def measure(label: str, spec: dict, box: int, device: str, batch: int, repeats: int, threads: int,
            precision: str = "fp32", model_options: dict | None = None) -> dict:
    """One row, in this process: seconds per batch of each phase, particles/s, peak memory (MiB). ``precision``
    autocasts the model as `emgroup train --precision` does (the reference stays fp32); ``model_options`` are
    given to every registered model (e.g. ``generator_layers``)."""
    model_options = model_options or {}
    import contextlib

    import torch

    from emgroup.models.groupconv import LiftingConv
    from emgroup.models.registry import build_model
    from emgroup.train.trainer import autocast_dtype

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rotations = {"P4": 4, "P8": 8, "P16": 16}.get(spec.get("group"))
    images = torch.rand(batch, box, box, generator=torch.Generator().manual_seed(0)).to(device)
    split = None
    if spec["model"] == "reference":
        layers = model_options.get("generator_layers", 2)
        params, loss, encode, encoder = reference_target(box, rotations, device, layers)
    elif spec["model"] == "lifting":
        layer = LiftingConv(1, 128, round(0.56 * box), round(0.16 * box), rotations, fft=spec["fft"]).to(device)
        params, encode = list(layer.parameters()), lambda x: layer(x[:, None])
        loss = lambda x: layer(x[:, None]).square().mean()  # noqa: E731
    else:
        options = ({"group": spec["group"]} if "group" in spec else {}) | model_options
        model = build_model(spec["model"], options, box).to(device)
        params, encode = list(model.parameters()), model.encode
        loss = lambda x: model.loss({"images": x, "index": torch.arange(len(x))})["loss"]  # noqa: E731
        if spec["model"] == "target":
            encoder = model._posterior
            split = True
    if spec["model"] == "reference":
        split = True
    optimizer = torch.optim.Adam(params, lr=1e-4)
    dtype = autocast_dtype(precision, torch.device(device))
    if dtype is not None and spec["model"] != "reference":
        autocast = lambda: torch.autocast(device, dtype=dtype)  # noqa: E731
    else:
        autocast, precision = contextlib.nullcontext, "fp32"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def train_step():
        optimizer.zero_grad()
        with autocast():
            value = loss(images)
        value.backward()
        optimizer.step()

    def forward_only():
        with torch.no_grad(), autocast():
            loss(images)

    def encoder_only():
        with torch.no_grad(), autocast():
            encoder(images)

    def inference():
        with torch.inference_mode(), autocast():
            encode(images)

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_step()  # warm-up
    inference()
    phases = {"train": train_step, "inference": inference}
    if split:
        phases |= {"forward": forward_only, "encoder": encoder_only}
    seconds = {name: min(timed(fn) for _ in range(repeats)) for name, fn in phases.items()}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline)
    row = {"row": label, "box": box, "device": device, "precision": precision, "batch": batch, "threads": threads,
           "train_particles_per_s": batch / seconds["train"], "inference_particles_per_s": batch / seconds["inference"],
           "peak_memory_mib": peak, "seconds_per_batch": seconds, "model_options": model_options}
    if split:  # forward-only timings are without autograd bookkeeping; backward is the rest of the step
        row["split_seconds"] = {"encoder_forward": seconds["encoder"],
                                "generator_and_loss_forward": seconds["forward"] - seconds["encoder"],
                                "backward_and_step": seconds["train"] - seconds["forward"]}
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU batches of 4 particles, one timed repeat.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 64, 100], help="Image sizes, px.")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda [default: cpu, and cuda when "
                        "available].")
    parser.add_argument("--batch", type=int, help="Particles per batch [default: CPU 4 quick / 16 full, CUDA 100].")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per row.")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="Autocast of the "
                        "models, as `emgroup train --precision` (bf16 on CUDA and the CPU, fp16 on CUDA only; the "
                        "reference rows stay fp32).")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="A model option for "
                        "every registered model's row, as in `emgroup train` (e.g. generator_layers=6); repeatable.")
    parser.add_argument("--repeats", type=int, help="Timed repeats per phase, the fastest kept [default: 1 quick, "
                        "3 full].")
    parser.add_argument("--models", nargs="+", default=None, help="Registered models [default: all].")
    parser.add_argument("--match", default="", help="Only the rows whose label contains this text.")
    parser.add_argument("--output", type=Path, default=None, help="JSON path [default: benchmarks/results/"
                        "throughput[_quick].json].")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row as JSON (label, spec, box, ...)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure(**json.loads(args.row))))
        return

    import torch

    from emgroup.models import registry

    try:
        model_options = parse_options(args.option)
    except ValueError as error:
        parser.error(str(error))
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for device in devices:
        batch = args.batch or BATCH[device][0 if args.quick else 1]
        for box in args.sizes:
            for label, spec in rows(args.models or list(registry.MODELS)):
                if args.match not in label:
                    continue
                job = {"label": label, "spec": spec, "box": box, "device": device, "batch": batch,
                       "repeats": args.repeats or (1 if args.quick else 3), "threads": args.threads,
                       "precision": args.precision, "model_options": model_options}
                done = subprocess.run([sys.executable, __file__, "--row", json.dumps(job)], capture_output=True,
                                      text=True, env=os.environ | MALLOC_ENV)  # as the `emgroup` command runs
                if done.returncode:
                    print(f"{label} {box}px {device}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(row)
                split = row.get("split_seconds", {})
                print(f"{device:4} {row['precision']:4} {box:4} {label:24} train {row['train_particles_per_s']:9.1f}/s  inference "
                      f"{row['inference_particles_per_s']:9.1f}/s  peak {row['peak_memory_mib']:8.0f} MiB  "
                      + "  ".join(f"{k} {v:.3f}s" for k, v in split.items()), flush=True)
    output = args.output or RESULTS / f"throughput{'_quick' if args.quick else ''}.json"
    write_results(output, {"benchmark": "training/inference particles per second and peak memory per model and "
                                        "image size", "quick": args.quick, "rows": results})


if __name__ == "__main__":
    main()
