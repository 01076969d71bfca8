"""`emgroup simulate`: density placement, RELION-exact projections and CTF, poses, conformations, SNR, volumes."""

import subprocess

import mrcfile
import numpy as np
import pytest

from emgroup.data.ctf import stack_ctf
from emgroup.data.poses import model_from_relion
from emgroup.data.simulate import FourierProjector, atom_density, conformation_volumes, images_from_rfft
from emgroup.data.stack import Stack
from emgroup.data.transforms import align_images, transform_images
from emgroup.io.atoms import read_atoms
from emgroup.io.mrc import write_volume
from emgroup.io.star import read_star

BOX, APIX = 40, 2.5  # the open state of adenylate kinase (radius ~37 Å) fits with a margin


def correlation(a, b):
    return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]


@pytest.fixture(scope="module")
def adk():
    """Atoms of the bundled closed adenylate kinase: (xyz (n, 3) Å, elements)."""
    import importlib.resources

    with importlib.resources.as_file(importlib.resources.files("emgroup.demo_data") / "adk_closed.pdb") as path:
        return read_atoms(path)


@pytest.fixture(scope="module")
def adk_volume(adk):
    return conformation_volumes(adk[0][None], adk[1], BOX, APIX)[0]


def simulate(run_emgroup, outdir, *options):
    result = run_emgroup("simulate", "-o", outdir, "--box", BOX, "--apix", APIX, "--no-progress", *options)
    assert result.exit_code == 0, result.output
    return Stack.open(outdir / "particles.star")


def test_density_centre_of_mass_is_the_box_centre(adk_volume):
    grid = np.arange(BOX)
    mass = adk_volume.sum()
    centre = [np.einsum("zyx,z->", adk_volume, grid) / mass, np.einsum("zyx,y->", adk_volume, grid) / mass,
              np.einsum("zyx,x->", adk_volume, grid) / mass]
    np.testing.assert_allclose(centre, BOX // 2, atol=0.05)


def test_atom_lands_on_its_voxel():
    # a carbon 6 Å along x and -4 Å along y of the centre: voxel (z, y, x) = (D//2, D//2 - 2, D//2 + 3) at 2 Å/px
    density = atom_density([[6.0, -4.0, 0.0]], ["C"], 32, 2.0, centre=np.zeros(3))
    assert np.unravel_index(density.argmax(), density.shape) == (16, 14, 19)


@pytest.mark.relion
def test_particles_match_relion_project_with_and_without_ctf(adk_volume, run_emgroup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = simulate(run_emgroup, tmp_path / "sim", "-n", 12, "--views", "random3d", "--shift-sigma", 3,
                     "--astigmatism", 2000, "--bfactor", 50, "--snr", "inf")
    write_volume(tmp_path / "volume.mrc", adk_volume, APIX)
    for options, ours in [((), "clean.mrcs"), (("--ctf",), "particles.mrcs")]:
        # RELION reads our STAR (poses, origins, CTF) and projects the same density
        subprocess.run(["relion_project", "--i", "volume.mrc", "--o", "relion", "--ang", "sim/particles.star",
                        *options], check=True, capture_output=True)
        for got, want in zip(mrcfile.read(tmp_path / "sim" / ours), mrcfile.read("relion.mrcs")):
            assert correlation(got, want) >= 0.99
    assert len(stack) == 12
    np.testing.assert_allclose(stack.meta["rlnDefocusU"] - stack.meta["rlnDefocusV"], 2000.0, atol=1e-3)


def test_inplane_pose_is_the_model_transform_of_the_canonical_image(adk_volume, run_emgroup, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = simulate(run_emgroup, tmp_path / "sim", "-n", 8, "--shift-sigma", 3, "--no-ctf", "--snr", "inf")
    meta = stack.meta
    assert (meta["rlnAngleRot"] == 0).all() and (meta["rlnAngleTilt"] == 0).all()
    canonical = images_from_rfft(FourierProjector(adk_volume[None]).project_rfft(np.eye(3)[None], [0]), BOX)
    theta, shift = model_from_relion(meta["rlnAnglePsi"], meta["rlnOriginXAngst"], meta["rlnOriginYAngst"], APIX)
    expected = transform_images(np.repeat(canonical, len(meta), 0), theta, shift)
    for got, want in zip(mrcfile.read(tmp_path / "sim" / "clean.mrcs"), expected):
        assert correlation(got, want) >= 0.99


@pytest.mark.relion
def test_relion_undoes_the_written_inplane_pose(adk_volume, run_emgroup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = simulate(run_emgroup, tmp_path / "sim", "-n", 6, "--shift-sigma", 3, "--no-ctf", "--snr", "inf")
    subprocess.run(["relion_stack_create", "--i", "sim/particles.star", "--o", "aligned", "--apply_transformation"],
                   check=True, capture_output=True)
    relion = mrcfile.read("aligned.mrcs")
    meta = stack.meta
    ours = align_images(stack.images(), *model_from_relion(meta["rlnAnglePsi"], meta["rlnOriginXAngst"],
                                                           meta["rlnOriginYAngst"], APIX))
    canonical = adk_volume.sum(axis=0)
    for a, b in zip(relion, ours):
        assert correlation(a, canonical) >= 0.98 and correlation(b, canonical) >= 0.98
        assert correlation(a, b) >= 0.99


def test_measured_snr_and_recorded_ctf(run_emgroup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = simulate(run_emgroup, tmp_path / "sim", "-n", 300, "--views", "random3d", "--snr", 0.5,
                     "--defocus", "0.8-3.0", "--bfactor", 30, "--seed", 3)
    clean = mrcfile.read(tmp_path / "sim" / "clean.mrcs")
    signal = np.fft.irfft2(np.fft.rfft2(clean) * stack_ctf(stack), s=(BOX, BOX))
    noise = stack.images() - signal
    assert signal.var(axis=(1, 2)).mean() / noise.var() == pytest.approx(0.5, rel=0.1)
    assert abs(correlation(signal, noise)) < 0.02  # what is left is noise: the STAR's CTF is the one applied
    assert abs(noise.mean()) < 0.05 * noise.std()


def test_conformations_from_two_models_are_the_recorded_truth(adk, adk_volume, run_emgroup, shared_data, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = simulate(run_emgroup, tmp_path / "sim", "-n", 30, "--pdb2", shared_data / "adk_open.pdb",
                     "--conformations", 3, "--rotation", "none", "--no-ctf", "--snr", "inf")
    truth = stack.meta["rlnEmgroupTrueConformation"].to_numpy()
    assert set(np.round(truth, 6)) == {0.0, 0.5, 1.0}
    clean = mrcfile.read(tmp_path / "sim" / "clean.mrcs")
    closed, open_ = clean[truth == 0], clean[truth == 1]
    np.testing.assert_allclose(closed, np.repeat(closed[:1], len(closed), 0), atol=1e-4)  # pose is fixed here
    assert correlation(closed[0], adk_volume.sum(axis=0)) > 0.99  # blend weight 0 is --pdb
    assert correlation(closed[0], open_[0]) < 0.9  # the open state looks different
    mean_x = [(image.sum(axis=0) * np.arange(BOX)).sum() / image.sum() for image in (closed[0], open_[0])]
    assert abs(mean_x[1] - mean_x[0]) < 1.5  # superposed and centred alike: conformation is not a shift


def test_trajectory_frames_are_the_truth(run_emgroup, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack = simulate(run_emgroup, tmp_path / "sim", "-n", 40, "--trajectory", shared_data / "adk_dims.npz",
                     "--conformations", 4, "--no-ctf", "--snr", "inf")
    frames = stack.meta["rlnEmgroupTrueConformation"].to_numpy() * 97  # 98 frames
    np.testing.assert_allclose(frames, np.round(frames), atol=1e-6)
    assert set(np.round(frames).astype(int)) == {0, 32, 65, 97}


@pytest.mark.relion
def test_volumes_mode(adk_volume, run_emgroup, relion_project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_emgroup("simulate", "-o", "sim", "--volumes", "-n", 3, "--box", BOX, "--apix", APIX,
                         "--no-progress")
    assert result.exit_code == 0, result.output
    table, optics = read_star("sim/volumes.star")
    assert optics["rlnImageDimensionality"].iloc[0] == 3
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    assert not any(column.startswith("rlnEmgroupQuat") for column in table)  # the Euler angles say it all
    assert (table["rlnEmgroupTrueConformation"] == 0).all()
    # each volume, projected along z, is what RELION projects from the unrotated object at its angles
    relion = relion_project(adk_volume, APIX, {"rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1],
                                               "rlnAnglePsi": angles[:, 2]})
    for name, want in zip(table["rlnImageName"], relion):
        with mrcfile.open(name) as mrc:  # the path is relative to the working directory
            assert mrc.voxel_size.x == pytest.approx(APIX)
            assert correlation(mrc.data.sum(axis=0), want) >= 0.99


def test_volume_noise_at_the_requested_snr(adk_volume, run_emgroup, tmp_path, monkeypatch):
    """--volumes --snr adds white noise of variance var(volume) / snr to the same turned volumes as without it."""
    monkeypatch.chdir(tmp_path)
    for outdir, snr in (("clean", "inf"), ("noisy", 0.5)):
        result = run_emgroup("simulate", "-o", outdir, "--volumes", "-n", 2, "--box", BOX, "--apix", APIX,
                             "--snr", snr, "--no-progress")
        assert result.exit_code == 0, result.output
    noise = np.stack([mrcfile.read(f"noisy/volumes/{i:06d}.mrc") - mrcfile.read(f"clean/volumes/{i:06d}.mrc")
                      for i in (1, 2)])
    assert noise.var() == pytest.approx(adk_volume.var() / 0.5, rel=0.05)
    assert abs(noise.mean()) < 0.05 * noise.std()


def test_volume_input_and_seed_reproducibility(adk_volume, run_emgroup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_volume("map.mrc", adk_volume, APIX)
    for outdir in ("a", "b"):  # box and pixel size come from the map
        result = run_emgroup("simulate", "-o", outdir, "--volume", "map.mrc", "-n", 6, "--rotation", "none",
                             "--seed", 5, "--no-progress")
        assert result.exit_code == 0, result.output
    stack = Stack.open("a/particles.star")
    assert (stack.box, stack.apix) == (BOX, APIX)
    clean = mrcfile.read("a/clean.mrcs")
    assert correlation(clean[0], adk_volume.sum(axis=0)) > 0.99
    for name in ("particles.mrcs", "clean.mrcs"):
        np.testing.assert_array_equal(mrcfile.read(f"a/{name}"), mrcfile.read(f"b/{name}"))
    tables = [read_star(f"{outdir}/particles.star")[0].drop(columns="rlnImageName") for outdir in "ab"]
    assert tables[0].equals(tables[1])


@pytest.mark.parametrize("options, message", [
    (("--pdb", "missing.pdb"), "missing.pdb"),
    (("--pdb", "atoms.pdb", "--box", 12), "does not fit"),
    (("--rotation", "normal:wide"), "normal:SIGMA_DEG"),
    (("--defocus", "2-1"), "MIN-MAX"),
    (("--volume", "atoms.pdb"), "atoms.pdb"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_emgroup, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "atoms.pdb").write_text(
        "ATOM      1  CA  ALA A   1      30.000   0.000   0.000  1.00  0.00           C\n"
        "ATOM      2  CA  ALA A   2     -30.000   0.000   0.000  1.00  0.00           C\n")
    result = run_emgroup("simulate", "-o", "out", "-n", 5, *options)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
