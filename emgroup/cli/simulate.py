"""`emgroup simulate`: particle images (or volumes) of a known object with known poses, conformations, CTF, noise."""

import importlib.resources
from pathlib import Path

import click
import numpy as np
import pandas as pd
from tqdm import tqdm

from emgroup.cli.types import FiniteFloat
from emgroup.data import simulate
from emgroup.data.poses import matrix_to_euler
from emgroup.data.stack import write_particles
from emgroup.errors import InputError
from emgroup.geometry import parse_angle_distribution, random_rotations_numpy, rotate_volume_numpy
from emgroup.io.atomic import output_folder, written_together
from emgroup.io.atoms import read_atoms, read_trajectory
from emgroup.io.mrc import StackWriter, read_volume, write_volume
from emgroup.io.star import optics_table, relative_to_cwd, write_star

FILE = click.Path(path_type=Path)
DEMO_PDB = "adk_closed.pdb"


def parse_rotation(ctx, param, value) -> tuple[str, float]:
    """``uniform``, ``none`` or ``normal:SIGMA`` (degrees) -> (kind, sigma)."""
    try:
        return parse_angle_distribution(value, "--rotation", plain=("uniform", "none"))
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def parse_range(ctx, param, value) -> tuple[float, float]:
    """``MIN-MAX`` with 0 < MIN <= MAX -> (min, max)."""
    try:
        low, high = (float(part) for part in value.split("-"))
    except ValueError:
        low = high = 0.0
    if not 0 < low <= high:
        raise click.BadParameter(f"{value!r} is not MIN-MAX with 0 < MIN <= MAX (e.g. 1.0-2.5)")
    return low, high


@click.command("simulate")
@click.option("-o", "--outdir", type=FILE, required=True,
              help="Output folder: particles.mrcs, particles.star, clean.mrcs (or volumes/ + volumes.star).")
@click.option("--pdb", type=FILE, default=None,
              help=f"Atomic model (PDB/mmCIF) of the object. [default: the bundled {DEMO_PDB}, adenylate kinase]")
@click.option("--volume", type=FILE, default=None,
              help="Density map (MRC) of the object instead of --pdb; its box and voxel size are the defaults.")
@click.option("--pdb2", type=FILE, default=None,
              help="Second atomic model (same atoms, same order): conformations are linear blends of --pdb and "
                   "this one (superposed on --pdb first); truth = blend weight in [0, 1].")
@click.option("--trajectory", type=FILE, default=None,
              help="Trajectory .npz (coords (F, n, 3) Å, elements (n,)) instead of --pdb: conformations are its "
                   "frames; truth = frame / (F - 1) in [0, 1].")
@click.option("--conformations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Distinct conformations simulated (evenly spaced blend weights or frames); each particle takes "
                   "one at random. Memory: 4 x (2 box)^3 bytes each (8 MB at box 64).")
@click.option("-n", "--n-particles", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Number of particles (or of volumes with --volumes).")
@click.option("--box", type=click.IntRange(min=8), default=None, help="Box size in pixels. [default: 64]")
@click.option("--apix", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Pixel size in Å/px. [default: 1.5]")
@click.option("--views", type=click.Choice(["inplane", "random3d"]), default="inplane", show_default=True,
              help="inplane: one projection direction (rot = tilt = 0); random3d: directions uniform on the sphere.")
@click.option("--rotation", callback=parse_rotation, default="uniform", show_default=True,
              metavar="uniform|normal:SIGMA_DEG|none",
              help="In-plane rotation psi: uniform on [-180, 180), normal:SIGMA (degrees, mean 0), or none.")
@click.option("--shift-sigma", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Standard deviation of the Gaussian translation, pixels per axis.")
@click.option("--ctf/--no-ctf", default=True, show_default=True, help="Apply a CTF to the particle images.")
@click.option("--defocus", callback=parse_range, default="1.0-2.5", show_default=True, metavar="MIN-MAX",
              help="Defocus range in µm (underfocus), drawn uniformly per particle.")
@click.option("--astigmatism", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="DefocusU - DefocusV in Å, at a uniformly random angle (0: no astigmatism, angle 0).")
@click.option("--voltage", type=FiniteFloat(min=0, min_open=True), default=300.0, show_default=True,
              help="Acceleration voltage, kV.")
@click.option("--cs", type=FiniteFloat(min=0), default=2.7, show_default=True,
              help="Spherical aberration, mm.")
@click.option("--amplitude-contrast", type=FiniteFloat(0, 1, max_open=True), default=0.1, show_default=True,
              help="Amplitude contrast fraction.")
@click.option("--bfactor", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="CTF envelope B-factor, Å^2 (exp(-B s^2 / 4)), written as rlnCtfBfactor.")
@click.option("--snr", type=FiniteFloat(min=0, min_open=True, allow_inf=True), default=None,
              help="Signal variance / noise variance (white Gaussian noise); signal = variance over the whole box "
                   "of the CTF-applied image, averaged over particles (with --volumes: of the unrotated volume, "
                   "averaged over conformations); 'inf' for no noise.  [default: 0.1; none with --volumes]")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same data).")
@click.option("--volumes", "volume_mode", is_flag=True,
              help="3D mode: write N volumes of the object in random SO(3) orientations and conformations "
                   "(no CTF or shift; noise only with --snr) to OUTDIR/volumes/ + OUTDIR/volumes.star.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(outdir, pdb, volume, pdb2, trajectory, conformations, n_particles, box, apix, views, rotation,
            shift_sigma, ctf, defocus, astigmatism, voltage, cs, amplitude_contrast, bfactor, snr, seed,
            volume_mode, progress):
    """Simulate cryo-EM particles of a known object with known truth into OUTDIR.

    \b
    Writes OUTDIR/particles.mrcs + particles.star (RELION 3.1: true pose in rlnAngleRot/Tilt/Psi and
    rlnOriginXAngst/YAngst, CTF in rlnDefocusU/V/Angle, conformation in rlnEmgroupTrueConformation) and
    OUTDIR/clean.mrcs (the same particles without CTF and noise). With --volumes: OUTDIR/volumes/*.mrc +
    OUTDIR/volumes.star. Example:
      emgroup simulate -o sim --pdb2 open.pdb -n 5000 --box 64 --apix 1.5 --shift-sigma 2 --snr 0.1
    """
    volumes, truth, box, apix = _object(pdb, volume, pdb2, trajectory, conformations, box, apix)
    rng = np.random.default_rng(seed)
    with output_folder(outdir), written_together():  # every file, or none
        if volume_mode:
            _write_volumes(outdir, volumes, truth, n_particles, apix, float("inf") if snr is None else snr, rng,
                           progress)
            return
        snr = 0.1 if snr is None else snr
        ctf_options = dict(defocus_um=defocus, astigmatism=astigmatism, bfactor=bfactor) if ctf else None
        table, conformation = simulate.sample_particles(
            n_particles, truth, rng, apix, ctf_options, views=views, rotation=rotation[0], rotation_sigma=rotation[1],
            shift_sigma_px=shift_sigma)
        optics = dict(voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast) if ctf else None
        chunks = simulate.render_particles(simulate.FourierProjector(volumes), table, conformation, apix, optics, snr,
                                           rng, chunk_size=max(1, 4_000_000 // box**2))
        with StackWriter(outdir / "clean.mrcs", n_particles, box, apix) as clean_stack, \
                tqdm(total=n_particles, unit="particle", disable=not progress) as bar:
            def particle_chunks():
                for clean, particles in chunks:
                    clean_stack.write(clean)
                    bar.update(len(clean))
                    yield particles

            star = write_particles(outdir / "particles.star", particle_chunks(), table,
                                   optics_table(apix, box, voltage, cs, amplitude_contrast), apix)
        click.echo(f"wrote {n_particles} particles of {box} px at {apix:g} Å/px to {star}, "
                   f"{star.with_suffix('.mrcs')} and {outdir / 'clean.mrcs'}")


def _object(pdb, volume, pdb2, trajectory, k, box, apix):
    """(volumes (K, D, D, D), truth (K,), box, apix) of the object the options describe."""
    if volume is not None:
        if pdb is not None or pdb2 is not None or trajectory is not None:
            raise click.UsageError("--volume takes no --pdb, --pdb2 or --trajectory")
        density, map_apix = read_volume(volume)
        if box is not None and box != density.shape[0]:
            raise InputError(f"the map is {density.shape[0]} px, not --box {box} (resample it first)", volume)
        if (apix or map_apix) is None:
            raise InputError("the header gives no voxel size: pass --apix", volume)
        return density[None], np.zeros(1), density.shape[0], apix or map_apix
    if pdb2 is not None and trajectory is not None:
        raise click.UsageError("give --pdb2 or --trajectory, not both")
    if trajectory is not None and pdb is not None:
        raise click.UsageError("--trajectory replaces --pdb (its first frame is the reference)")
    box, apix = box or 64, apix or 1.5
    if trajectory is not None:
        frames, elements = read_trajectory(trajectory)
        coords, truth = simulate.trajectory_conformations(frames, k)
    else:
        with importlib.resources.as_file(importlib.resources.files("emgroup.demo_data") / DEMO_PDB) as demo:
            xyz, elements = read_atoms(pdb or demo)
        coords, truth = xyz[None], np.zeros(1)
        if pdb2 is not None:
            xyz2, elements2 = read_atoms(pdb2)
            if elements2 != elements:
                raise InputError(f"its {len(elements2)} atoms do not match the {len(elements)} of --pdb one to one",
                                 pdb2)
            coords, truth = simulate.blend_conformations(xyz, xyz2, k)
    return simulate.conformation_volumes(coords, elements, box, apix), truth, box, apix


def _write_volumes(outdir, volumes, truth, n, apix, snr, rng, progress):
    """OUTDIR/volumes/000001.mrc ... of the object turned by uniform random rotations, with white Gaussian noise of
    variance (mean variance of the conformations' volumes over the box) / ``snr``, + OUTDIR/volumes.star."""
    rotations = random_rotations_numpy(n, rng)
    conformation = rng.integers(0, len(truth), n)
    rot, tilt, psi = matrix_to_euler(rotations)
    names = [outdir / "volumes" / f"{i + 1:06d}.mrc" for i in range(n)]
    noise_sigma = np.sqrt(volumes.var(axis=(1, 2, 3)).mean() / snr)
    rotated = (rotate_volume_numpy(volumes[k], a.T) for a, k in zip(rotations, conformation))  # V_k(A^T x)
    for name, vol in zip(names, tqdm(rotated, total=n, unit="volume", disable=not progress)):
        if noise_sigma:
            vol += rng.normal(0.0, noise_sigma, vol.shape).astype(np.float32)
        write_volume(name, vol, apix)
    table = pd.DataFrame({"rlnImageName": [relative_to_cwd(name) for name in names],
                          "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                          "rlnEmgroupTrueConformation": truth[conformation], "rlnOpticsGroup": 1})
    optics = optics_table(apix, volumes.shape[-1]).assign(rlnImageDimensionality=3)
    write_star(outdir / "volumes.star", table, optics)
    click.echo(f"wrote {n} volumes of {volumes.shape[-1]} px at {apix:g} Å/px to {outdir / 'volumes'} and "
               f"{outdir / 'volumes.star'}")
