"""Simulated cryo-EM data with known truth: densities from atoms, conformations, RELION-convention projections,
CTF and noise.

Conventions are RELION's (see :mod:`emgroup.data.poses`, :mod:`emgroup.ctf`): a particle with Euler angles
(rot, tilt, psi) and origin ``o`` is ``image(x) = sum_z V(A^T (x + o, z))`` with ``A = euler_to_matrix(...)``,
computed as RELION does (Fourier slice of the 2x padded, gridding-corrected volume with trilinear interpolation).
"""

from collections.abc import Iterator

import gemmi
import numpy as np
import pandas as pd
import scipy.fft
from scipy.spatial.transform import Rotation

from emgroup.ctf import ctf_parameters, ctf_rfft
from emgroup.data.poses import euler_to_matrix, matrix_to_euler
from emgroup.errors import InputError
from emgroup.geometry import random_rotations_numpy

#: noise is calibrated on the CTF-applied signal of this many particles (the first ones)
NOISE_CALIBRATION = 1000


def scattering_weights(elements) -> np.ndarray:
    """(n,) integrated electron scattering of each atom, f_e(0) = sum of gemmi's c4322 Gaussian amplitudes."""
    table = {e: sum(gemmi.Element(e).c4322.a) for e in set(elements)}
    return np.array([table[e] for e in elements])


def scattering_centre(xyz, elements) -> np.ndarray:
    """(3,) centre of mass of the electron scattering density of atoms at xyz (n, 3) Å."""
    weights = scattering_weights(elements)
    return weights @ np.asarray(xyz) / weights.sum()


def atom_density(xyz, elements, box: int, apix: float, centre) -> np.ndarray:
    """float32 (D, D, D) z-y-x electron scattering density (gemmi ``DensityCalculatorE``) of atoms at xyz (n, 3) Å.

    The point ``centre`` (Å) lands on voxel ``D // 2``. Every atom gets the B-factor ``16 apix^2`` Å^2 (amplitude
    1/e at Nyquist), so the density is sampled without aliasing; the model's own B-factors are ignored.
    """
    xyz = np.asarray(xyz, dtype=float)
    radius = np.linalg.norm(xyz - centre, axis=1).max()
    if radius > (box // 2 - 2) * apix:
        raise InputError(f"the object (radius {radius:.0f} Å about its centre) does not fit in a box of {box} px "
                         f"at {apix:g} Å/px: increase --box or --apix")
    residue = gemmi.Residue()
    for position, element in zip(xyz - centre + (box // 2) * apix, elements):
        atom = gemmi.Atom()
        atom.pos, atom.element, atom.occ, atom.b_iso = gemmi.Position(*position), gemmi.Element(element), 1.0, 0.0
        residue.add_atom(atom)
    chain = gemmi.Chain("A")
    chain.add_residue(residue)
    model = gemmi.Model("1")
    model.add_chain(chain)
    calculator = gemmi.DensityCalculatorE()
    calculator.grid.set_unit_cell(gemmi.UnitCell(box * apix, box * apix, box * apix, 90, 90, 90))  # periodic, P1
    calculator.grid.set_size(box, box, box)
    calculator.blur = 16.0 * apix**2
    calculator.put_model_density_on_grid(model)
    return np.array(calculator.grid, dtype=np.float32).transpose(2, 1, 0)  # gemmi's grid is x-y-z


def trajectory_conformations(coords, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k frames evenly spaced along a trajectory (F, n, 3) -> (coords (k, n, 3), truth = frame / (F - 1) (k,))."""
    frames = np.unique(np.round(np.linspace(0, len(coords) - 1, min(k, len(coords)))).astype(int))
    return np.asarray(coords)[frames], frames / (len(coords) - 1)


def blend_conformations(first, second, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k linear blends of matched atoms (n, 3), the second model superposed on the first beforehand
    -> (coords (k, n, 3), truth = blend weight in [0, 1] (k,))."""
    weights = np.linspace(0.0, 1.0, k)
    first = np.asarray(first, dtype=float)
    second = superpose(second, first)
    return (1 - weights[:, None, None]) * first + weights[:, None, None] * second, weights


def superpose(mobile, target, weights=None) -> np.ndarray:
    """``mobile`` (n, 3) moved rigidly onto ``target`` (n, 3), least squares (Kabsch) with optional weights."""
    mobile, target = np.asarray(mobile, dtype=float), np.asarray(target, dtype=float)
    weights = np.ones(len(mobile)) if weights is None else np.asarray(weights, dtype=float)
    mobile_centre, target_centre = weights @ mobile / weights.sum(), weights @ target / weights.sum()
    rotation, _ = Rotation.align_vectors(target - target_centre, mobile - mobile_centre, weights)
    return rotation.apply(mobile - mobile_centre) + target_centre


def conformation_volumes(coords, elements, box: int, apix: float) -> np.ndarray:
    """float32 (K, D, D, D) densities of K conformations (K, n, 3) Å, each superposed on the first (weighted by
    scattering) and all placed with the first conformation's scattering centre on voxel D // 2, so that a change
    of conformation is not also a change of pose."""
    weights = scattering_weights(elements)
    centre = scattering_centre(coords[0], elements)
    aligned = [coords[0], *(superpose(xyz, coords[0], weights) for xyz in coords[1:])]
    return np.stack([atom_density(xyz, elements, box, apix, centre) for xyz in aligned])


class FourierProjector:
    """Projections of a bank of K volumes (K, D, D, D) by Fourier slicing, as RELION computes them.

    The volumes are gridding-corrected (divided by sinc^2), padded ``pad`` times and Fourier transformed once;
    each projection interpolates one central slice trilinearly (frequencies up to Nyquist).
    """

    def __init__(self, volumes, pad: int = 2):
        volumes = np.asarray(volumes, dtype=np.float32)
        self.box, self.pad = volumes.shape[-1], pad
        size = pad * self.box
        axis = np.arange(self.box) - self.box // 2
        z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
        gridding = np.sinc(np.sqrt(x**2 + y**2 + z**2) / size) ** 2
        inner = slice(size // 2 - self.box // 2, size // 2 - self.box // 2 + self.box)
        # frequency 0 at index size // 2 along z and y; two zero planes past the end of each axis keep every
        # corner of a trilinear lookup up to Nyquist inside the array
        self.spectrum = np.zeros((len(volumes), size + 2, size + 2, size // 2 + 3), np.complex64)
        padded = np.zeros((size, size, size), np.float32)
        for k, volume in enumerate(volumes):  # one volume at a time bounds the memory to the bank itself
            padded[inner, inner, inner] = volume / gridding
            spectrum = scipy.fft.rfftn(scipy.fft.ifftshift(padded), workers=-1)
            self.spectrum[k, :size, :size, :size // 2 + 1] = scipy.fft.fftshift(spectrum, axes=(0, 1))

    def project_rfft(self, matrices, conformation, origin_px=None) -> np.ndarray:
        """complex64 (N, D, D // 2 + 1) rfft2 of the projections (real-space origin at index 0).

        matrices (N, 3, 3) RELION rotations, conformation (N,) indices into the bank, origin_px (N, 2) RELION
        origins in pixels (x, y): the image is the projection translated by ``-origin``.
        """
        box, n = self.box, len(matrices)
        ky, kx = np.meshgrid(scipy.fft.fftfreq(box, 1.0 / box), scipy.fft.rfftfreq(box, 1.0 / box), indexing="ij")
        inside = kx**2 + ky**2 <= (box / 2) ** 2
        k2 = np.stack([kx[inside], ky[inside]], -1).astype(np.float32)  # (M, 2) frequencies up to Nyquist
        # their 3-D frequencies A^T (kx, ky, 0) in padded-grid units, (N, M, 3) ordered x, y, z
        k3 = k2 @ (self.pad * np.asarray(matrices, dtype=np.float32)[:, :2, :])
        friedel = k3[..., 0] < 0  # the rfft stores x >= 0 only: F(-k) = conj F(k)
        k3[friedel] *= -1
        centre = self.pad * box // 2
        values = trilinear(self.spectrum, np.asarray(conformation)[:, None], k3[..., 2] + centre,
                           k3[..., 1] + centre, k3[..., 0])
        values[friedel] = np.conj(values[friedel])
        if origin_px is not None:
            origin = np.asarray(origin_px, dtype=np.float32).reshape(n, 2)
            values *= np.exp(1j * np.float32(2 * np.pi / box) * (origin @ k2.T))
        spectra = np.zeros((n, *kx.shape), np.complex64)
        spectra[:, inside] = values
        return spectra


def trilinear(bank, index, z, y, x) -> np.ndarray:
    """Trilinear interpolation of ``bank`` (K, Z, Y, X) at bank ``index`` (integers) and fractional array
    coordinates z, y, x (all broadcast together; each within [0, size - 2] of its axis)."""
    z0, y0, x0 = np.floor(z), np.floor(y), np.floor(x)
    fz, fy, fx = z - z0, y - y0, x - x0
    _, size_z, size_y, size_x = bank.shape
    base = ((index * size_z + z0.astype(np.int64)) * size_y + y0.astype(np.int64)) * size_x + x0.astype(np.int64)
    flat = bank.reshape(-1)
    out = 0
    for dz, wz in ((0, 1 - fz), (1, fz)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            left = flat.take(base + (dz * size_y + dy) * size_x)
            right = flat.take(base + (dz * size_y + dy) * size_x + 1)
            out = out + (wz * wy) * (left + fx * (right - left))
    return out


def images_from_rfft(spectra, box: int) -> np.ndarray:
    """float32 (N, D, D) images, centred at D // 2, from their rfft2 (N, D, D // 2 + 1) with origin at index 0."""
    images = scipy.fft.irfft2(spectra, s=(box, box), workers=-1)
    return scipy.fft.fftshift(images, axes=(1, 2)).astype(np.float32, copy=False)


def sample_poses(n: int, rng: np.random.Generator, views: str = "inplane", rotation: str = "uniform",
                 rotation_sigma: float = 0.0, shift_sigma_px: float = 0.0, apix: float = 1.0) -> pd.DataFrame:
    """RELION pose columns for n particles: rlnAngleRot/Tilt/Psi (degrees), rlnOriginXAngst/YAngst (Å).

    views ``"inplane"`` (rot = tilt = 0) or ``"random3d"`` (directions uniform on the sphere); in-plane psi
    ``"uniform"`` on [-180, 180), ``"normal"`` N(0, rotation_sigma^2) degrees, or ``"none"``; origins
    N(0, shift_sigma_px^2) pixels per axis.
    """
    if views == "random3d":
        rot, tilt, _ = matrix_to_euler(random_rotations_numpy(n, rng))
    else:
        rot = tilt = np.zeros(n)
    psi = {"uniform": lambda: rng.uniform(-180.0, 180.0, n), "normal": lambda: rng.normal(0.0, rotation_sigma, n),
           "none": lambda: np.zeros(n)}[rotation]()
    origin = rng.normal(0.0, shift_sigma_px, (n, 2)) * apix
    return pd.DataFrame({"rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                         "rlnOriginXAngst": origin[:, 0], "rlnOriginYAngst": origin[:, 1]})


def sample_ctf(n: int, rng: np.random.Generator, defocus_um=(1.0, 2.5), astigmatism: float = 0.0,
               bfactor: float = 0.0) -> pd.DataFrame:
    """rlnDefocusU/V (Å), rlnDefocusAngle (degrees), rlnCtfBfactor (Å^2): mean defocus uniform in ``defocus_um``
    (µm), U - V = ``astigmatism`` (Å) at a uniform angle (angle 0 when there is no astigmatism)."""
    mean = rng.uniform(*defocus_um, n) * 1e4
    angle = rng.uniform(-180.0, 180.0, n) if astigmatism else np.zeros(n)
    return pd.DataFrame({"rlnDefocusU": mean + astigmatism / 2, "rlnDefocusV": mean - astigmatism / 2,
                         "rlnDefocusAngle": angle, "rlnCtfBfactor": np.full(n, float(bfactor))})


def sample_particles(n: int, truth, rng: np.random.Generator, apix: float, ctf_options=None,
                     **pose_options) -> tuple[pd.DataFrame, np.ndarray]:
    """A RELION particle table for n particles and their conformation indices (n,) into ``truth`` (K,).

    Each particle draws a conformation uniformly from the K of the bank (``rlnEmgroupTrueConformation`` is its
    truth value), a pose (:func:`sample_poses` with ``pose_options``) and, when ``ctf_options`` (a dict of
    :func:`sample_ctf`'s options) is given, CTF parameters.
    """
    conformation = rng.integers(0, len(truth), n)
    tables = [sample_poses(n, rng, apix=apix, **pose_options)]
    if ctf_options is not None:
        tables.append(sample_ctf(n, rng, **ctf_options))
    tables.append(pd.DataFrame({"rlnEmgroupTrueConformation": np.asarray(truth, dtype=float)[conformation]}))
    return pd.concat(tables, axis=1), conformation


def render_particles(projector: FourierProjector, table: pd.DataFrame, conformation, apix: float, optics=None,
                     snr: float = float("inf"), rng=None, chunk_size: int = 1000) -> Iterator[tuple]:
    """Yield ``(clean, particles)`` float32 chunks (m, D, D) for the particles in ``table`` (RELION labels).

    ``clean`` is the noise- and CTF-free projection at the particle's pose; ``particles`` has the CTF (when
    ``optics`` = dict(voltage kV, cs mm, amplitude_contrast) is given; defocus and B-factor from the table) and
    Gaussian white noise of one variance for the whole dataset: the mean, over the first ``NOISE_CALIBRATION``
    particles, of the variance over the whole box of the CTF-applied image, divided by ``snr`` (inf: no noise),
    drawn from ``rng`` (a ``numpy.random.Generator``; needed when ``snr`` is finite).
    """
    matrices = euler_to_matrix(table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"])
    origin_px = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix
    conformation = np.asarray(conformation)
    box = projector.box

    def render(select):
        spectra = projector.project_rfft(matrices[select], conformation[select], origin_px[select])
        if optics is None:
            return spectra, spectra
        rows = table.iloc[select]
        ctf = ctf_rfft(box, ctf_parameters(apix, rows["rlnDefocusU"], rows["rlnDefocusV"], rows["rlnDefocusAngle"],
                                           bfactor=rows["rlnCtfBfactor"], **optics)).numpy()
        return spectra, spectra * ctf

    noise_sigma = 0.0
    if np.isfinite(snr):
        signal = images_from_rfft(render(slice(0, NOISE_CALIBRATION))[1], box)
        noise_sigma = np.sqrt(signal.var(axis=(1, 2)).mean() / snr)
    for start in range(0, len(table), chunk_size):
        spectra, with_ctf = render(slice(start, start + chunk_size))
        particles = images_from_rfft(with_ctf, box)
        if noise_sigma:
            particles += rng.normal(0.0, noise_sigma, particles.shape).astype(np.float32)
        yield images_from_rfft(spectra, box), particles

