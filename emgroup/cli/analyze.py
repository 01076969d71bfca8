"""`emgroup analyze`: poses, latents, clusters, class averages and denoised particles of a trained run, for
RELION and cryoSPARC, with figures and (on simulated data) metrics against the truth."""

from pathlib import Path

import click

from emgroup.analysis.clustering import METHODS
from emgroup.analysis.pipeline import Options, analyze
from emgroup.data.stack import Stack
from emgroup.devices import resolve_device
from emgroup.errors import InputError
from emgroup.io.atomic import output_folder, written_together
from emgroup.train.checkpoint import load_run

FILE = click.Path(path_type=Path)


def _clusters(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise click.BadParameter(f"{value!r} is neither a positive number of clusters nor 'auto'")
    return k


@click.command("analyze")
@click.argument("rundir", type=FILE)
@click.argument("particles", metavar="[PARTICLES]", type=FILE, required=False)
@click.option("-o", "--outdir", type=FILE, required=True,
              help="Output folder (created; nothing is written when the input is bad).")
@click.option("--checkpoint", default="best", show_default=True,
              help="Which weights: 'best' (lowest validation loss), 'last', or a path to a .pt checkpoint.")
@click.option("--clusters", default="auto", show_default=True, callback=lambda ctx, param, value: _clusters(value),
              help="Number of clusters K (>= 1), or 'auto': K in 2..--max-clusters by the lowest BIC (gmm) or "
                   "the highest silhouette score (kmeans, agglomerative), scored on 2,000 random particles.")
@click.option("--cluster-method", type=click.Choice(METHODS), default="gmm", show_default=True,
              help="Clustering of the latent means: Gaussian mixture (full covariance), k-means (10 restarts) or "
                   "Ward agglomerative (fitted on at most 10,000 particles; the rest join the nearest centroid).")
@click.option("--max-clusters", type=click.IntRange(min=2), default=10, show_default=True,
              help="Largest K tried by --clusters auto.")
@click.option("--device", default="auto", show_default=True,
              help="Torch device: 'auto' (the GPU when there is one), 'cpu', 'cuda', 'cuda:N'.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Particles encoded at a time (bounds memory).")
@click.option("--canonical", is_flag=True,
              help="Denoised particles in the canonical pose (theta = 0, shift = 0) instead of each one's own pose.")
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Write denoised.mrcs/.star (the model's reconstruction of every particle; the slowest step).")
@click.option("--align-classes", is_flag=True,
              help="Bring every class into the frame of the largest one (the generator draws each latent value in a "
                   "frame of its own): the rotation is followed along the straight latent path from the largest "
                   "cluster's centre to each other centre (16 steps, each aligned to 1 degree and refined), the "
                   "shift puts the decoded classes' centres of density on each other; the particles' poses, class "
                   "averages and decoded classes move into that frame (docs/analyze.md).")
@click.option("--root", type=FILE, default=None,
              help="Folder tried first when resolving image paths in PARTICLES (then the working directory, then "
                   "the STAR file's folder).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the clustering.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write report.html: one self-contained page with the figures, metrics, settings and the RELION "
                   "and cryoSPARC commands that continue from the outputs.")
def command(rundir, particles, outdir, checkpoint, clusters, cluster_method, max_clusters, device, batch_size,
            canonical, denoise, align_classes, root, seed, progress, report):
    """Encode PARTICLES with the model trained in RUNDIR and write OUTDIR/particles.star (+ .cs), latents.h5,
    class_averages.mrcs + classes.star, class_decoded.mrcs, denoised.mrcs + .star, figures/*.png, report.html (the
    figures, metrics and next commands on one page, for a browser) and, when the STAR carries ground truth,
    metrics.json.

    Poses: particles.star carries emgroup's pose in the RELION labels (rlnAnglePsi, rlnOriginXAngst/YAngst; SO(3)
    models also rlnAngleRot/Tilt) and its cluster in rlnClassNumber; the pose and class the particles came with
    (e.g. a 3-D refinement's rlnAngleRot/Tilt/Psi) are kept as rlnEmgroupInputAngleRot, rlnEmgroupInputAngleTilt,
    rlnEmgroupInputAnglePsi, rlnEmgroupInputOriginXAngst/YAngst, rlnEmgroupInputClassNumber. A .cs input's
    particles.cs keeps every input field and uid.

    PARTICLES (a RELION .star, .mrcs or cryoSPARC .cs) defaults to the particles the run was trained on. For a
    volume model (--model masked --group SO3) it is a volumes .star, a folder or one .mrc/.nii[.gz] file, and the
    outputs are OUTDIR/volumes.star, latents.h5, class_decoded/classNNN.mrc, denoised/NNNNNN.mrc + denoised.star,
    figures/*.png (volumes drawn as projections along z), report.html and metrics.json.

    \b
    Example:
      emgroup analyze runs/spatial -o analysis --clusters 5
    """
    if canonical and not denoise:
        raise click.UsageError("--canonical poses the denoised particles: it does nothing with --no-denoise")
    torch_device = resolve_device(device)  # one process: analyze is not distributed
    model, config = load_run(rundir, checkpoint, torch_device)
    if particles is None:
        particles, root = Path(config["particles"]), root or config.get("root")
    stack = Stack.open(particles, model.ndim, root=root)
    if stack.box != config["box"]:
        raise InputError(f"box {stack.box} px does not match the model's {config['box']} px", particles)
    if abs(stack.apix - config["apix"]) > 1e-3 * config["apix"]:
        raise InputError(f"pixel size {stack.apix:g} Å does not match the model's {config['apix']:g} Å", particles)
    options = Options(clusters, cluster_method, max_clusters, batch_size, torch_device, canonical, denoise,
                      align_classes, seed, progress, report)
    with output_folder(outdir), written_together():  # every output, or none
        summary = analyze(model, stack, outdir, rundir, options)
    noun = "volumes" if stack.ndim == 3 else "particles"
    click.echo(f"{summary['particles']} {noun} in {summary['clusters']} clusters {summary['counts']}; outputs in "
               f"{outdir}")
    for name, value in summary["metrics"].items():
        click.echo(f"  {name}: {value:.4g}")
