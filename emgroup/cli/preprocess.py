"""`emgroup preprocess`: any particle input -> one normalized, optionally downsampled MRCS stack + RELION 3.1 STAR."""

from pathlib import Path

import click

from emgroup.cli.types import FiniteFloat
from emgroup.data.preprocess import SPLIT_COLUMN, preprocess_stack
from emgroup.data.stack import Stack
from emgroup.io.atomic import output_folder

FILE = click.Path(path_type=Path)


@click.command("preprocess")
@click.argument("input_path", metavar="[INPUT]", type=FILE, required=False)
@click.option("-o", "--outdir", type=FILE, required=True,
              help="Output folder; gets particles.mrcs and particles.star (created; never written on bad input).")
@click.option("--downsample", type=click.IntRange(min=2), default=None,
              help="New box size in pixels, by Fourier cropping (pixel size grows by box/D). [default: keep the box]")
@click.option("--invert", "invert_contrast", is_flag=True, help="Invert the contrast (dark particles become bright).")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Per particle, scale the background outside a circle of radius box/2 px to mean 0, std 1.")
@click.option("--max-particles", type=click.IntRange(min=1), default=None,
              help="Keep only the first N particles. [default: all]")
@click.option("--val-fraction", type=FiniteFloat(0, 1, max_open=True), default=0.1, show_default=True,
              help=f"Fraction of particles marked 'val' (the rest 'train') in the {SPLIT_COLUMN} column.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the train/val split.")
@click.option("--apix", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Pixel size in Å/px, overriding the input's (shifts in Å are rescaled with it; optics groups "
                   "at different pixel sizes are refused either way). [default: from the STAR/.cs/MRC header]")
@click.option("--root", type=FILE, default=None,
              help="Folder tried first when resolving image paths in a STAR/.cs file (then the working "
                   "directory, then the file's folder).")
@click.option("--coords", type=FILE, default=None,
              help="Topaz coordinate table (image_name, x_coord, y_coord, score; pixels) instead of INPUT.")
@click.option("--micrographs", type=FILE, default=None,
              help="With --coords: folder holding <image_name>.mrc micrographs.")
@click.option("--box", type=click.IntRange(min=2), default=None,
              help="With --coords: box size in micrograph pixels, centred on each coordinate.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Particles processed at a time (bounds memory: about 12 x chunk x box^2 bytes).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(input_path, outdir, downsample, invert_contrast, normalize, max_particles, val_fraction, seed, apix,
            root, coords, micrographs, box, chunk_size, progress):
    """Extract, downsample, normalize and split particles into OUTDIR/particles.mrcs + particles.star.

    INPUT is a RELION .star, an .mrcs/.mrc stack or a cryoSPARC .cs file; or give --coords, --micrographs
    and --box to cut particles out of micrographs at Topaz coordinates.
    """
    if (input_path is None) == (coords is None):
        raise click.UsageError("give either INPUT or --coords (with --micrographs and --box)")
    if coords is not None and (micrographs is None or box is None):
        raise click.UsageError("--coords needs --micrographs and --box")
    if coords is not None:
        stack = Stack.from_topaz(coords, micrographs, box, apix=apix)
        click.echo(f"{len(stack)} boxes of {box} px; {stack.edge_skipped} skipped for crossing a micrograph edge")
    else:
        stack = Stack.open(input_path, root=root, apix=apix)
    with output_folder(outdir):  # bad pixels found while streaming: no trace left
        star = preprocess_stack(stack, outdir / "particles.star", downsample=downsample,
                                invert_contrast=invert_contrast, normalize_background=normalize,
                                max_particles=max_particles, val_fraction=val_fraction, seed=seed,
                                chunk_size=chunk_size, progress=progress)
    n = min(len(stack), max_particles or len(stack))
    click.echo(f"wrote {n} particles to {star} and {star.with_suffix('.mrcs')}")
