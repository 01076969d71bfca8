"""The figures of `emgroup analyze` (emgroup.analysis.plots) show what they say: pixels differ from a blank canvas,
panels from each other, titles name what was drawn, and the pose figure puts predictions against the truth."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from emgroup.analysis import plots
from figures import assert_not_blank, assert_panels_differ, capture_figures, png_pixels


@pytest.fixture
def captured(monkeypatch):
    return capture_figures(monkeypatch)


def blobs(n: int, box: int = 24) -> np.ndarray:
    """``n`` images (n, box, box), each a Gaussian blob at its own place."""
    y, x = np.mgrid[:box, :box]
    centres = np.column_stack([np.linspace(5, box - 6, n), 6 + 2 * np.arange(n)])
    return np.stack([np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 6.0) for cx, cy in centres]).astype(np.float32)


def test_the_checks_fail_on_a_blank_figure_and_on_identical_panels(tmp_path, captured):
    """The assertions below can fail: a blank canvas, a figure of empty panels or of one picture twice does not
    pass them."""
    figure = plt.figure(figsize=(3, 2))
    with pytest.raises(AssertionError, match="colours"):
        assert_not_blank(png_pixels(plots._save(figure, tmp_path / "canvas.png")))
    plots.image_grid(np.zeros((1, 2, 16, 16)), tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="colours"):
        assert_panels_differ(captured[-1]["panels"])
    plots.image_grid(np.stack([blobs(1)[0]] * 2)[None], tmp_path / "twice.png")
    with pytest.raises(AssertionError, match="the same"):
        assert_panels_differ(captured[-1]["panels"])


def test_latent_map_draws_one_different_panel_per_colouring_and_its_title(tmp_path, captured):
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(c, 0.3, (50, 2)) for c in (-2, 0, 2)])
    truth = np.repeat([1, 2, 3], 50)
    png = plots.latent_map(z, {"cluster": truth, "true conformation": rng.uniform(size=150)}, tmp_path / "map.png",
                           title="latent means\nspatial model on p.star, 150 particles")
    assert (tmp_path / "map.png").read_bytes() == png
    assert_not_blank(png_pixels(png))
    (figure,) = captured
    assert figure["title"] == "latent means\nspatial model on p.star, 150 particles"
    assert len(figure["panels"]) == 2
    assert_panels_differ(figure["panels"])


def test_gallery_shows_each_image_in_its_own_panel_and_pads_with_blank_ones(tmp_path, captured):
    images = blobs(5)
    plots.gallery(images, tmp_path / "g.png", titles=[f"{k}: {10 * k}" for k in range(1, 6)], columns=3)
    panels = captured[-1]["panels"]
    assert len(panels) == 6
    assert_panels_differ(panels[:5])
    assert np.ptp(panels[5]) < 0.05  # the padding panel is empty
    axes = captured[-1]["figure"].axes
    assert [ax.get_title() for ax in axes[:5]] == ["1: 10", "2: 20", "3: 30", "4: 40", "5: 50"]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_traversal_grid_and_its_description(k):
    rng = np.random.default_rng(k)
    z = rng.normal(size=(300, k)) * np.arange(1, k + 1)
    grid, described = plots.traversal_latents(z, steps=6)
    assert grid.shape == ((1, 6, k) if k == 1 else (6, 6, k))
    assert "rows: ," not in described and ": ," not in described
    if k == 1:
        assert described.startswith("z1 ") and "left to right" in described
        np.testing.assert_allclose(grid[0, [0, -1], 0], np.percentile(z[:, 0], [5, 95]))
    else:
        names = ("z1", "z2") if k == 2 else ("PC1", "PC2")
        assert f"columns: {names[0]}" in described and f"rows: {names[1]}" in described
        assert np.ptp(grid[0, :, :], axis=0).max() > 0 and np.ptp(grid[:, 0, :], axis=0).max() > 0


def test_training_curves_one_panel_per_quantity_train_and_val_together(tmp_path, captured):
    epochs = np.arange(1, 6)
    table = pd.DataFrame({"epoch": epochs, "train_loss": 10.0 / epochs, "val_loss": 11.0 / epochs,
                          "train_kl": np.log(epochs + 1), "lr": 1e-3 * 0.5 ** epochs})
    png = plots.training_curves(table, tmp_path / "curves.png", title="training curves")
    assert_not_blank(png_pixels(png))
    figure = captured[-1]
    assert [ax.get_title() for ax in figure["figure"].axes[:3]] == ["loss", "kl", "lr"]
    assert len(figure["figure"].axes[0].lines) == 2  # train_loss and val_loss share the panel
    assert_panels_differ(figure["panels"])


def test_poses_histograms_and_predicted_against_true_with_the_frame_offset_removed(tmp_path, captured):
    rng = np.random.default_rng(1)
    theta_true = rng.uniform(-np.pi, np.pi, 400)
    origin_true = rng.normal(0, 5, (400, 2))
    theta = np.angle(np.exp(1j * (theta_true + 1.0 + rng.normal(0, 0.05, 400))))  # the model's frame: 1 rad off
    shift = rng.normal(0, 1, (400, 2))
    png = plots.poses(theta, shift, tmp_path / "poses.png", title="poses")
    assert_not_blank(png_pixels(png))
    assert len(captured[-1]["panels"]) == 3
    assert_panels_differ(captured[-1]["panels"])

    truth = {"theta": theta, "theta_true": theta_true, "origin": origin_true + rng.normal(0, 0.2, (400, 2)),
             "origin_true": origin_true, "scores": [0.99, 0.98, None]}
    plots.poses(theta, shift, tmp_path / "poses.png", truth=truth, title="poses")
    figure = captured[-1]
    assert len(figure["panels"]) == 6
    assert_panels_differ(figure["panels"])
    angle, x, y = figure["figure"].axes[3:]
    true_deg, predicted_deg = angle.collections[0].get_offsets().T
    np.testing.assert_allclose(true_deg, (np.degrees(theta_true) + 180) % 360 - 180)
    residual = (predicted_deg - true_deg + 180) % 360 - 180  # on the diagonal once the offset is taken off
    assert np.abs(residual).max() < 20 and abs(np.mean(residual)) < 1
    assert "predicted − 57°" in angle.get_ylabel() and "0.990" in angle.get_title() and "0.980" in x.get_title()
    np.testing.assert_allclose(y.collections[0].get_offsets(), np.column_stack([origin_true[:, 1],
                                                                                truth["origin"][:, 1]]))


def test_mask_plot_and_image_grid_labels(tmp_path, captured):
    png = plots.mask_plot(np.array([1, 0, 1, 1, 0, 0, 1, 0]), tmp_path / "mask.png", title="mask")
    assert_not_blank(png_pixels(png), min_colours=4)
    plots.image_grid(blobs(6).reshape(2, 3, 24, 24), tmp_path / "grid.png", row_labels=["input", "denoised"],
                     col_labels=["a", "b", "c"], title="grid")
    axes = captured[-1]["figure"].axes
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["input", "denoised"]
    assert [ax.get_xlabel() for ax in axes[3:]] == ["a", "b", "c"]
    assert_panels_differ(captured[-1]["panels"])


def test_a_one_dimensional_latent_map_stacks_clusters_and_plots_z1_against_continuous_truth(tmp_path, captured):
    rng = np.random.default_rng(2)
    conformation = rng.uniform(size=300)
    z = (2 * conformation + rng.normal(0, 0.1, 300))[:, None]
    plots.latent_map(z, {"cluster": (conformation > 0.5) + 1, "true conformation": conformation}, tmp_path / "m.png")
    figure = captured[-1]
    assert_panels_differ(figure["panels"])
    histogram, scatter = figure["figure"].axes[:2]
    assert histogram.get_ylabel() == "particles" and sum(p.get_height() for p in histogram.patches) > 0
    np.testing.assert_allclose(scatter.collections[0].get_offsets(), np.column_stack([z[:, 0], conformation]))
    assert scatter.get_ylabel() == "true conformation"
