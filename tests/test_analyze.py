"""`emgroup analyze`: clustering, streamed inference through the model interface, and the command end to end —
every output read back (by RELION 3.1 and as cryoSPARC records too), poses and classes consistent across files."""

import base64
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from emgroup.analysis import clustering
from emgroup.analysis.clustering import cluster_latents
from emgroup.analysis.frames import to_common_frame
from emgroup.analysis.inference import encode_stack, relion_pose_columns
from emgroup.analysis.metrics import (best_latent_correlation, circular_correlation, circular_correlation_uniform,
                                      clustering_accuracy, image_correlation, pearson)
from emgroup.data.ctf import stack_ctf_parameters
from emgroup.analysis.pipeline import particles_table
from emgroup.data.poses import model_from_relion, relion_from_model
from emgroup.data.stack import Stack, write_particles
from emgroup.data.transforms import transform_images
from emgroup.io.cryosparc import read_cs
from emgroup.io.star import optics_table, read_star, write_star
from emgroup.models.registry import build_model
from emgroup.train.checkpoint import load_run
from figures import assert_not_blank, assert_self_contained, capture_figures, png_pixels

BOX, APIX = 32, 3.0


# --- clustering -------------------------------------------------------------------------------------------------

def three_groups(rng, sizes=(50, 30, 20)):
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 6.0, -2.0]])
    truth = np.repeat(np.arange(3), sizes)
    return centres[truth] + rng.normal(0, 0.5, (truth.size, 3)), truth


@pytest.mark.parametrize("method", clustering.METHODS)
def test_clustering_finds_separated_groups_numbered_by_size(method):
    features, truth = three_groups(np.random.default_rng(0))
    for k in (3, "auto"):
        clusters = cluster_latents(features, k, method, max_clusters=6)
        assert clusters.n_clusters == 3 and clustering_accuracy(truth, clusters.labels) == 1.0
        assert clusters.counts.tolist() == [50, 30, 20] and np.array_equal(clusters.labels, truth)
        np.testing.assert_allclose(clusters.centres, [features[truth == c].mean(0) for c in range(3)])
    assert set(clusters.scores) == set(range(2, 7))


def test_wide_latents_are_clustered_on_principal_components_and_summarised_in_the_star():
    rng = np.random.default_rng(4)
    features, truth = three_groups(rng)
    wide = np.hstack([features, rng.normal(0, 0.1, (len(features), 97))])  # 100 dimensions
    clusters = cluster_latents(wide, 3, "gmm", max_dims=8)
    assert clustering_accuracy(truth, clusters.labels) == 1.0 and clusters.centres.shape == (3, 100)
    table = particles_table(pd.DataFrame(index=range(len(wide))), {"z": wide}, clusters.labels, APIX)
    latent_columns = [c for c in table if c.startswith("rlnEmgroupLatent")]
    assert latent_columns == [f"rlnEmgroupLatentPC{i}" for i in range(1, 11)]
    leading = table[["rlnEmgroupLatentPC1", "rlnEmgroupLatentPC2"]].to_numpy()  # the plane of the three groups
    assert clustering_accuracy(truth, cluster_latents(leading, 3, "kmeans").labels) == 1.0
    few = np.vstack([wide[truth == c][:4] for c in range(3)])  # 12 particles, fewer than the 32 components
    assert clustering_accuracy(np.repeat(np.arange(3), 4), cluster_latents(few, 3, "kmeans").labels) == 1.0


def test_principal_components_of_wide_latents_are_the_same_in_every_run():
    """600 x 1000 latents: scikit-learn takes its randomized solver, unseeded it differed between runs."""
    wide = np.random.default_rng(5).normal(size=(600, 1000)) * np.linspace(3, 0.1, 1000)
    labels = np.zeros(600, dtype=int)
    runs = [particles_table(pd.DataFrame(index=range(600)), {"z": wide}, labels, APIX, seed=0) for _ in range(3)]
    for other in runs[1:]:
        pd.testing.assert_frame_equal(other, runs[0], check_exact=True)


def test_the_input_pose_and_class_are_kept_and_an_earlier_analysis_does_not_replace_them():
    encoding = {"z": np.zeros((3, 2)), "theta": np.radians([10.0, 20.0, 30.0]), "shift": np.ones((3, 2))}
    meta = pd.DataFrame({"rlnImageName": ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"], "rlnAngleRot": [1.0, 2, 3],
                         "rlnAngleTilt": [40.0, 50, 60], "rlnAnglePsi": [7.0, 8, 9], "rlnOriginXAngst": [0.5, 0, 0],
                         "rlnOriginYAngst": [0.0, 1, 2], "rlnClassNumber": [4, 5, 6]})
    first = particles_table(meta, encoding, np.array([0, 1, 0]), APIX)
    assert "rlnAngleRot" not in first and "rlnAngleTilt" not in first
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                  "rlnClassNumber"):
        np.testing.assert_array_equal(first[f"rlnEmgroupInput{label[3:]}"], meta[label])
    np.testing.assert_allclose(first["rlnAnglePsi"], relion_from_model(encoding["theta"], encoding["shift"], APIX)[0])
    assert first["rlnClassNumber"].tolist() == [1, 2, 1]
    second = particles_table(first, {**encoding, "theta": np.zeros(3)}, np.array([1, 1, 0]), APIX)
    assert list(second.columns) == list(first.columns)  # no label twice
    for label in ("rlnAngleRot", "rlnAnglePsi", "rlnClassNumber"):
        np.testing.assert_array_equal(second[f"rlnEmgroupInput{label[3:]}"], meta[label])  # still the original
    assert second["rlnClassNumber"].tolist() == [2, 2, 1]


def test_agglomerative_beyond_its_memory_limit_assigns_every_point(monkeypatch):
    monkeypatch.setattr(clustering, "AGGLOMERATIVE_LIMIT", 40)
    features, truth = three_groups(np.random.default_rng(1), sizes=(150, 100, 50))
    clusters = cluster_latents(features, 3, "agglomerative")
    assert clustering_accuracy(truth, clusters.labels) == 1.0 and clusters.counts.sum() == 300


# --- inference through the model interface ------------------------------------------------------------------------

@pytest.fixture
def small_stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(2).normal(size=(23, BOX, BOX)).astype(np.float32)
    write_particles("p.star", [images], pd.DataFrame(index=range(23)), optics_table(APIX, BOX), APIX)
    return Stack.open("p.star")


def test_encode_stack_streams_like_one_pass_and_decodes_in_own_or_canonical_pose(small_stack):
    torch.manual_seed(0)
    model = build_model("spatial", {"z_dim": 3, "hidden": 16}, BOX).eval()
    images = torch.from_numpy(small_stack.images())
    with torch.no_grad():
        whole = model.encode(images)
        own, canonical = model.decode(whole), model.decode({"z": whole["z"]})
    for want, flag in [(own, False), (canonical, True)]:
        received = []
        with h5py.File("e.h5", "w", driver="core", backing_store=False) as h5:
            stored = encode_stack(model, small_stack, h5, batch_size=5, canonical=flag, progress=False,
                                  decoded=lambda idx, inp, rec: received.append((idx, inp, rec)))
            assert set(stored) == set(whole)
            for name, value in whole.items():  # float32 products differ with the batch size in the last bits
                np.testing.assert_allclose(stored[name][:], value.numpy(), rtol=1e-4, atol=1e-4)
        assert np.array_equal(np.concatenate([r[0] for r in received]), np.arange(23))
        np.testing.assert_array_equal(np.concatenate([r[1] for r in received]), images.numpy())
        np.testing.assert_allclose(np.concatenate([r[2] for r in received]), want.numpy(), rtol=1e-4, atol=1e-5)


def test_relion_pose_columns_round_trip_and_identity_pose_for_pose_free_models():
    rng = np.random.default_rng(3)
    theta, shift = rng.uniform(-np.pi, np.pi, 10), rng.normal(0, 2, (10, 2))
    table = relion_pose_columns({"z": np.zeros((10, 1)), "theta": theta, "shift": shift}, 10, APIX)
    back_theta, back_shift = model_from_relion(table["rlnAnglePsi"], table["rlnOriginXAngst"],
                                               table["rlnOriginYAngst"], APIX)
    np.testing.assert_allclose(np.exp(1j * back_theta), np.exp(1j * theta), atol=1e-12)
    np.testing.assert_allclose(back_shift, shift, atol=1e-12)
    identity = relion_pose_columns({"z": np.zeros((4, 1))}, 4, APIX)
    assert list(identity) == ["rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"] and not identity.any().any()


# --- the command, end to end ------------------------------------------------------------------------------------

def test_canonical_without_denoising_is_a_usage_error(run_emgroup, tmp_path):
    result = run_emgroup("analyze", tmp_path / "run", "-o", tmp_path / "out", "--canonical", "--no-denoise")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "emgroup: error: --canonical poses the denoised particles: it does nothing with --no-denoise "
        "(see emgroup analyze --help)"]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """A tiny spatial-VAE trained for 2 epochs on 200 simulated particles, analyzed with 3 clusters (k-means):
    (project folder, run folder, output folder); paths in the outputs are relative to the project folder."""
    from click.testing import CliRunner

    from emgroup.cli.main import cli

    folder = tmp_path_factory.mktemp("analyze")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        torch.set_num_threads(1)
        for args in (["simulate", "-o", "sim", "-n", 200, "--box", BOX, "--apix", APIX, "--shift-sigma", 2,
                      "--conformations", 3, "--pdb2", _adk_open(), "--snr", 1, "--no-progress"],
                     ["train", "sim/particles.star", "-o", "run", "--model", "spatial", "--epochs", 2, "--hidden", 32,
                      "--batch-size", 50, "--no-progress"],
                     ["analyze", "run", "-o", "out", "--clusters", 3, "--cluster-method", "kmeans", "--batch-size",
                      64, "--no-progress"]):
            result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
            assert result.exit_code == 0, result.output
    return folder


def _adk_open():
    import importlib.resources

    return importlib.resources.files("emgroup.demo_data") / "adk_open.pdb"


@pytest.mark.slow
def test_outputs_agree_with_each_other_and_read_back(analyzed, monkeypatch):
    monkeypatch.chdir(analyzed)
    particles, optics = read_star("out/particles.star")
    source, _ = read_star("sim/particles.star")
    assert len(particles) == 200 and optics["rlnImagePixelSize"].item() == APIX
    assert np.array_equal(particles["rlnImageName"], source["rlnImageName"])  # same particles, same order
    with h5py.File("out/latents.h5") as h5:
        z, theta, shift = h5["encoding/z"][:], h5["encoding/theta"][:], h5["encoding/shift"][:]
        classes = h5["class_number"][:]
        assert h5["encoding/z_std"].shape == (200, 2) and np.array_equal(h5["particle_index"][:], np.arange(200))
    np.testing.assert_allclose(particles[["rlnEmgroupLatent1", "rlnEmgroupLatent2"]], z, rtol=1e-6, atol=1e-7)
    assert np.array_equal(particles["rlnClassNumber"], classes) and set(classes) == {1, 2, 3}
    psi, origin_x, origin_y = relion_from_model(theta, shift, APIX)
    np.testing.assert_allclose(particles["rlnAnglePsi"], psi, atol=1e-4)
    np.testing.assert_allclose(particles[["rlnOriginXAngst", "rlnOriginYAngst"]], np.column_stack([origin_x, origin_y]),
                               atol=1e-5)
    # the simulated 3-D poses came in: kept under rlnEmgroupInput*, none of them mixed into emgroup's in-plane pose
    assert "rlnAngleRot" not in particles and "rlnAngleTilt" not in particles
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(particles[f"rlnEmgroupInput{label[3:]}"], source[label], rtol=1e-6, atol=1e-9)

    cs, _, _ = read_cs("out/particles.cs")  # cryoSPARC fields: radians, pixels, 0-based classes
    np.testing.assert_allclose(cs["rlnAnglePsi"], particles["rlnAnglePsi"], atol=1e-3)
    np.testing.assert_allclose(cs[["rlnOriginXAngst", "rlnOriginYAngst"]], particles[["rlnOriginXAngst",
                                                                                      "rlnOriginYAngst"]], atol=1e-4)
    assert np.array_equal(cs["rlnClassNumber"], classes) and np.array_equal(cs["rlnImageName"],
                                                                            particles["rlnImageName"])

    table, _ = read_star("out/classes.star")
    counts = np.bincount(classes)[1:]
    assert np.array_equal(table["rlnEmgroupParticleCount"], counts)
    np.testing.assert_allclose(table["rlnClassDistribution"], counts / 200)
    assert table["rlnReferenceImage"].tolist() == [f"00000{k}@out/class_averages.mrcs" for k in (1, 2, 3)]
    assert mrcfile.read("out/class_averages.mrcs").shape == mrcfile.read("out/class_decoded.mrcs").shape == (3, BOX,
                                                                                                              BOX)
    denoised = Stack.open("out/denoised.star")
    assert len(denoised) == 200 and denoised.apix == APIX
    model, _ = load_run("run", "best")
    stack = Stack.open("sim/particles.star")
    assert model.uses_ctf  # the simulated particles carry defocus: the run models the CTF
    with torch.no_grad():
        expected = model.decode(model.encode(torch.from_numpy(stack.images()),
                                             torch.from_numpy(stack_ctf_parameters(stack))))
    np.testing.assert_allclose(denoised.images(), expected.numpy(), atol=1e-4)

    # every metric, computed again from the files: the written poses, classes and latents against the input's truth,
    # the denoised and the noisy particles against the clean ones
    theta_true, _ = model_from_relion(source["rlnAnglePsi"] + source["rlnAngleRot"], 0.0, 0.0, APIX)
    conformation = source["rlnEmgroupTrueConformation"].to_numpy()
    clean = mrcfile.read("sim/clean.mrcs")
    r, dim = best_latent_correlation(z, conformation)
    expected = {"rotation_circular_correlation": circular_correlation(theta, theta_true),
                "rotation_circular_correlation_uniform": circular_correlation_uniform(theta, theta_true),
                **{f"translation_pearson_{axis}": pearson(particles[f"rlnOrigin{axis.upper()}Angst"],
                                                          source[f"rlnOrigin{axis.upper()}Angst"]) for axis in "xy"},
                "state_accuracy": clustering_accuracy(conformation, classes),
                "latent_conformation_abs_pearson": r, "latent_conformation_dim": dim + 1,
                "denoised_clean_correlation": image_correlation(mrcfile.read("out/denoised.mrcs"), clean).mean(),
                "input_clean_correlation": image_correlation(stack.images(), clean).mean()}
    metrics = json.loads((analyzed / "out/metrics.json").read_text())
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    figures = {p.name for p in (analyzed / "out/figures").iterdir()}
    assert {"latent_map.png", "class_averages.png", "class_decoded.png", "latent_traversal.png",
            "training_curves.png", "poses.png", "denoised.png"} <= figures
    for name in figures:
        assert_not_blank(png_pixels((analyzed / "out/figures" / name).read_bytes()))


@pytest.mark.slow
def test_report_embeds_every_figure_the_metrics_and_settings_and_loads_nothing(analyzed):
    text = (analyzed / "out/report.html").read_text()
    page = assert_self_contained(text)
    figures = sorted(p.read_bytes() for p in (analyzed / "out/figures").iterdir())
    embedded = sorted(base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images)
    assert embedded == figures  # every figure, exactly as written
    assert "spatial model from run/ on sim/particles.star, 200 particles" in text
    for name, value in json.loads((analyzed / "out/metrics.json").read_text()).items():
        assert f"<th>{name}</th><td class=\"number\">{value:.4g}</td>" in text
    config = json.loads((analyzed / "run/config.json").read_text())
    assert f"<th>hidden</th><td class=\"number\">{config['model_options']['hidden']}</td>" in text
    assert any("relion_refine --i out/class001.star" in c and "--ctf" in c for c in page.commands)
    assert "Particle meta path: " + str((analyzed / "out/particles.cs").resolve()) in text


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(analyzed, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", "--hide-scrollbars", (analyzed / "out/report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=180)
    pixels = png_pixels(shot.read_bytes())
    assert pixels.shape == (3000, 1200, 3) and pixels.std() > 0.05
    assert_not_blank(pixels, min_colours=200, min_drawn=0.05)
    assert_not_blank(pixels[1500:], min_colours=100, min_drawn=0.05)  # the figures below the tables are drawn


@pytest.mark.slow
def test_each_figure_names_the_model_the_particles_and_their_number(analyzed, run_emgroup, monkeypatch):
    monkeypatch.chdir(analyzed)
    captured = capture_figures(monkeypatch)
    result = run_emgroup("analyze", "run", "-o", "titled", "--clusters", 2, "--no-denoise", "--no-report",
                         "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(captured) == len(list(Path("titled/figures").iterdir())) >= 6
    for figure in captured:
        assert figure["title"].endswith("\nspatial model from run/ on sim/particles.star, 200 particles")
        for panel in figure["panels"]:
            assert_not_blank(panel, min_colours=2)
    assert not Path("titled/report.html").exists() and not Path("titled/figures/denoised.png").exists()


@pytest.mark.slow
def test_canonical_denoising_and_other_clustering(analyzed, run_emgroup, monkeypatch):
    monkeypatch.chdir(analyzed)
    result = run_emgroup("analyze", "run", "sim/particles.star", "-o", "canon", "--canonical", "--clusters", 2,
                         "--cluster-method", "agglomerative", "--checkpoint", "last", "--no-progress")
    assert result.exit_code == 0, result.output
    denoised = Stack.open("canon/denoised.star")
    assert not denoised.meta[["rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]].any().any()
    model, _ = load_run("run", "last")
    with h5py.File("canon/latents.h5") as h5:
        z = torch.from_numpy(h5["encoding/z"][:])
        assert h5.attrs["cluster_method"] == "agglomerative" and set(h5["class_number"][:]) == {1, 2}
    with torch.no_grad():
        np.testing.assert_allclose(denoised.images(), model.decode({"z": z}).numpy(), atol=1e-4)
    assert "denoised_clean_correlation" not in json.loads((analyzed / "canon/metrics.json").read_text())


@pytest.mark.slow
def test_aligned_classes_move_each_class_into_the_largest_ones_frame(analyzed, run_emgroup, monkeypatch):
    monkeypatch.chdir(analyzed)
    result = run_emgroup("analyze", "run", "-o", "framed", "--clusters", 3, "--cluster-method", "kmeans",
                         "--batch-size", 64, "--align-classes", "--no-denoise", "--no-report", "--no-progress")
    assert result.exit_code == 0, result.output
    with h5py.File("framed/latents.h5") as h5:
        frames, labels = h5["class_frames"][:], h5["class_number"][:] - 1
        theta, shift = h5["encoding/theta"][:], h5["encoding/shift"][:]  # each particle's own frame
    assert frames.shape == (3, 3) and not frames[np.argmax(np.bincount(labels))].any() and frames.any()
    theta, shift = to_common_frame(theta, shift, labels, (np.radians(frames[:, 0]), frames[:, 1:]))
    psi, origin_x, origin_y = relion_from_model(theta, shift, APIX)
    particles, _ = read_star("framed/particles.star")
    turn = np.remainder(particles["rlnAnglePsi"].to_numpy() - psi + 180, 360) - 180
    np.testing.assert_allclose(turn, 0, atol=1e-3)
    np.testing.assert_allclose(particles[["rlnOriginXAngst", "rlnOriginYAngst"]], np.column_stack([origin_x, origin_y]),
                               atol=1e-3)
    decoded, unaligned = mrcfile.read("framed/class_decoded.mrcs"), mrcfile.read("out/class_decoded.mrcs")
    np.testing.assert_allclose(decoded, transform_images(unaligned, np.radians(frames[:, 0]), frames[:, 1:]),
                               atol=1e-5)


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_writes_nothing(analyzed, run_emgroup, monkeypatch):
    monkeypatch.chdir(analyzed)
    images = Stack.open("sim/particles.star").images(np.arange(4))
    write_particles("wrong_apix.star", [images], pd.DataFrame(index=range(4)), optics_table(2.0, BOX), 2.0)
    write_particles("wrong_box.star", [images[:, :16, :16]], pd.DataFrame(index=range(4)), optics_table(APIX, 16), APIX)
    (analyzed / "empty_run").mkdir()
    (analyzed / "empty_run" / "config.json").write_text((analyzed / "run" / "config.json").read_text())
    images[2, 5, 5] = np.inf
    write_particles("inf.star", [images], pd.DataFrame(index=range(4)), optics_table(APIX, BOX), APIX)
    meta, optics = read_star("sim/particles.star")
    write_star("volumes.star", meta, optics.assign(rlnImageDimensionality=3))
    cases = [(["run", "volumes.star"], "volumes.star: holds 3-D volumes"), (["run", "wrong_apix.star"], "pixel size"), (["run", "wrong_box.star"], "box 16 px"),
             (["empty_run"], "checkpoint"), (["run", "--checkpoint", "newest"], "checkpoint"),
             (["run", "inf.star"], "inf.star: particle 3 (000003@inf.mrcs) has NaN or Inf pixels")]
    for args, words in cases:
        result = run_emgroup("analyze", *args, "-o", "never/here", "--no-progress")
        assert result.exit_code == 2 and words in result.output and len(result.output.strip().splitlines()) == 1
        assert not (analyzed / "never").exists()


@pytest.mark.slow
@pytest.mark.relion
def test_relion_reads_every_output_and_its_own_alignment_gives_our_class_averages(analyzed, monkeypatch):
    monkeypatch.chdir(analyzed)
    particles, _ = read_star("out/particles.star")

    def relion(*args):
        return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout

    # relion_star_handler parses our class numbers (selection by value) and keeps our extra labels
    relion("relion_star_handler", "--i", "out/particles.star", "--o", "class1.star", "--select", "rlnClassNumber",
           "--minval", 1, "--maxval", 1)
    selected, _ = read_star("class1.star")
    assert len(selected) == (particles["rlnClassNumber"] == 1).sum()
    np.testing.assert_allclose(selected["rlnEmgroupLatent1"], particles.loc[particles["rlnClassNumber"] == 1,
                                                                            "rlnEmgroupLatent1"], rtol=1e-6)
    for star in ("out/denoised.star", "out/classes.star"):
        relion("relion_star_handler", "--i", star, "--o", "copy.star")
        assert len(read_star("copy.star")[0]) == len(read_star(star)[0])
    for stack in ("out/class_averages.mrcs", "out/class_decoded.mrcs", "out/denoised.mrcs"):
        assert "avg=" in relion("relion_image_handler", "--i", stack, "--stats").replace(" ", "")

    relion("relion_stack_create", "--i", "out/particles.star", "--o", "aligned", "--apply_transformation")
    aligned = mrcfile.read("aligned.mrcs")
    labels = particles["rlnClassNumber"].to_numpy()
    theirs = np.stack([aligned[labels == k].mean(0) for k in (1, 2, 3)])
    assert np.all(image_correlation(theirs, mrcfile.read("out/class_averages.mrcs")) >= 0.95)


@pytest.mark.slow
@pytest.mark.relion
def test_the_reports_relion_commands_run(analyzed, tmp_path):
    """Every shell command on the report but the GUI viewer runs as written (RELION's 2-D classification for one
    iteration, on one thread) and does what the report says."""
    commands = assert_self_contained((analyzed / "out/report.html").read_text()).commands
    script = "\n".join(c.replace("--iter 25", "--iter 1").replace("--j 4", "--j 1") for c in commands
                       if not c.startswith("relion_display"))
    assert script.startswith(f"cd {analyzed}") and "relion_refine" in script
    subprocess.run(["bash", "-e", "-c", script], check=True, capture_output=True, cwd=tmp_path)
    particles, _ = read_star(analyzed / "out/particles.star")
    selected, _ = read_star(analyzed / "out/class001.star")
    assert len(selected) == (particles["rlnClassNumber"] == 1).sum() > 0
    assert mrcfile.read(analyzed / "Class2D/emgroup_class001/run_it001_classes.mrcs").shape == (3, BOX, BOX)
    assert mrcfile.read(analyzed / "out/aligned.mrcs").shape == (200, BOX, BOX)


# --- volumes ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def analyzed_volumes(tmp_path_factory):
    """A tiny masked SO(3) model trained for one epoch on 24 simulated AdK volumes (closed/open), analyzed with 2
    k-means clusters: the project folder (paths in the outputs are relative to it)."""
    from click.testing import CliRunner

    from emgroup.cli.main import cli

    folder = tmp_path_factory.mktemp("volumes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        torch.set_num_threads(1)
        for args in (["simulate", "-o", "sim", "--volumes", "-n", 24, "--box", 16, "--apix", 7, "--pdb2", _adk_open(),
                      "--conformations", 2, "--no-progress"],
                     ["train", "sim/volumes.star", "-o", "run", "--model", "masked", "--group", "SO3", "--width", 4,
                      "--latent-channels", 4, "--epochs", 1, "--batch-size", 8, "--no-progress"],
                     ["analyze", "run", "-o", "out", "--clusters", 2, "--cluster-method", "kmeans", "--no-progress"]):
            result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
            assert result.exit_code == 0, result.output
    return folder


@pytest.mark.slow
def test_volume_outputs_agree_with_the_model_and_the_input(analyzed_volumes, monkeypatch):
    monkeypatch.chdir(analyzed_volumes)
    table, optics = read_star("out/volumes.star")
    source, _ = read_star("sim/volumes.star")
    assert optics["rlnImageDimensionality"].item() == 3 and optics["rlnImagePixelSize"].item() == 7
    for column in source:  # every input column kept (the true orientations too), same volumes, same order
        assert np.array_equal(table[column], source[column]), column
    with h5py.File("out/latents.h5") as h5:
        z, z_v, z_i = (h5[f"encoding/{name}"][:] for name in ("z", "z_v", "z_i"))
        classes = h5["class_number"][:]
    np.testing.assert_allclose(z_v + z_i, z, atol=1e-6)
    assert np.array_equal(table["rlnClassNumber"], classes) and set(classes) == {1, 2}
    model, _ = load_run("run", "best")
    volumes = torch.from_numpy(Stack.open("sim/volumes.star", ndim=3).images())
    with torch.no_grad():
        expected = model.decode(model.encode(volumes))
        centres = model.decode({"z": torch.from_numpy(np.stack([z[classes == k].mean(0) for k in (1, 2)]))})
    denoised = Stack.open("out/denoised.star", ndim=3)
    assert len(denoised) == 24 and denoised.apix == 7
    np.testing.assert_allclose(denoised.images(), expected.numpy(), atol=1e-4)
    for k in (1, 2):
        np.testing.assert_allclose(mrcfile.read(f"out/class_decoded/class{k:03d}.mrc"), centres[k - 1].numpy(),
                                   atol=1e-4)
    metrics = json.loads(Path("out/metrics.json").read_text())
    conformation = source["rlnEmgroupTrueConformation"].to_numpy()
    r, dim = best_latent_correlation(z, conformation)
    assert metrics == pytest.approx({"latent_conformation_abs_pearson": r, "latent_conformation_dim": dim + 1,
                                     "state_accuracy": clustering_accuracy(conformation, classes)}, rel=1e-6)
    figures = {p.name for p in Path("out/figures").iterdir()}
    assert {"latent_map.png", "class_decoded.png", "latent_traversal.png", "mask.png", "latent_swap.png",
            "group_action.png", "denoised.png"} <= figures and "class_averages.png" not in figures
    page = assert_self_contained(Path("out/report.html").read_text())
    assert len(page.images) == len(figures) and "class_averages" not in page.ids
    assert any("out/volumes.star" in command for command in page.commands)


@pytest.mark.slow
@pytest.mark.relion
def test_relion_reads_the_volume_outputs(analyzed_volumes, monkeypatch):
    monkeypatch.chdir(analyzed_volumes)
    for star in ("out/volumes.star", "out/denoised.star"):
        subprocess.run(["relion_star_handler", "--i", star, "--o", "copy.star"], check=True, capture_output=True)
        assert len(read_star("copy.star")[0]) == 24
    for volume in ("out/class_decoded/class001.mrc", "out/denoised/000024.mrc"):
        stats = subprocess.run(["relion_image_handler", "--i", volume, "--stats"], check=True, capture_output=True,
                               text=True).stdout
        assert "16 x 16 x 16 x 1" in stats and "angpix = 7" in stats
