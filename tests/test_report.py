"""report.html (emgroup.analysis.report): one page that needs nothing but itself, with every figure, the metrics,
the settings and the commands that continue in RELION and cryoSPARC. The page of a real run, rendered by a real
browser, is tested in test_analyze.py."""

import base64
import shlex

import numpy as np

from emgroup.analysis import plots
from emgroup.analysis.report import FIGURES, next_steps, report_html, run_settings, write_report
from figures import assert_self_contained, parse_page


def page(tmp_path, figures=None, metrics=None, steps=None):
    if figures is None:
        images = np.random.default_rng(0).normal(size=(1, 2, 16, 16))
        figures = {"poses.png": plots.image_grid(images, tmp_path / "a.png"),
                   "latent_map.png": plots.mask_plot([1, 0, 1], tmp_path / "b.png")}
    return report_html("emgroup analyze: spatial <model> on p.star", {"particles": 200, "clusters": 3},
                       {"emgroup analyze": {"clusters": "auto"}, "training": {"z_dim": 2}},
                       {"rotation_circular_correlation": 0.91234, "latent_conformation_dim": 2} if metrics is None
                       else metrics, figures,
                       steps or next_steps(tmp_path, "out", [80, 70, 50], 32, 3.0, True, False, False,
                                           [tmp_path / "sim" / "particles.mrcs"]))


def test_the_page_loads_nothing_and_embeds_each_figure_as_written(tmp_path):
    text = page(tmp_path)
    parsed = assert_self_contained(text)
    assert [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in parsed.images] == [
        (tmp_path / "b.png").read_bytes(), (tmp_path / "a.png").read_bytes()]  # in FIGURES order: map, then poses
    assert list(FIGURES).index("latent_map.png") < list(FIGURES).index("poses.png")
    assert {"summary", "metrics", "latent_map", "poses", "next", "settings"} <= parsed.ids
    assert "&lt;model&gt;" in text and "<model>" not in text  # text is escaped
    assert "0.9123" in text and "circular correlation" in text and "z_dim" in text


def test_without_metrics_or_figures_the_page_has_no_such_sections(tmp_path):
    parsed = assert_self_contained(page(tmp_path, figures={}, metrics={}))
    assert not parsed.images and "metrics" not in parsed.ids and "next" in parsed.ids


def test_next_steps_for_particles_and_volumes(tmp_path):
    folder = tmp_path / "my project"
    steps = next_steps(folder, "out dir", [80, 70], 32, 3.0, True, False, False, [folder / "sim" / "p.mrcs"])
    commands = [text for _, text, shell in steps if shell]
    assert commands[0] == f"cd {shlex.quote(str(folder))}"
    assert all(shlex.split(line) for command in commands for line in command.splitlines())  # quoted paths parse
    refine = next(c for c in commands if "relion_refine" in c)
    assert "--i 'out dir/class001.star'" in refine and "--ctf" in refine and "--particle_diameter 77" in refine
    assert "--select rlnClassNumber --minval 1 --maxval 1" in commands[2] and "80 particles" in steps[2][0]
    (form,) = [text for _, text, shell in steps if not shell]
    assert f"Particle meta path: {folder / 'out dir' / 'particles.cs'}" in form
    assert f"Particle data path: {folder / 'sim'}/*.mrcs" in form
    assert not any("relion_reconstruct" in c for c in commands)
    assert any("relion_reconstruct" in text for _, text, _ in next_steps(folder, "out", [5], 32, 3.0, False, True,
                                                                         False))
    volumes = [text for _, text, _ in next_steps(folder, "out", [12, 12], 16, 7.0, False, False, True)]
    assert "out/volumes.star" in volumes[1] and "out/class_decoded/class001.mrc" in volumes[2]
    assert not any("relion_refine" in text or "particles.cs" in text for text in volumes)


def test_written_atomically_and_the_commands_can_be_read_back(tmp_path):
    steps = next_steps(tmp_path, "out", [3], 16, 2.0, False, False, False)
    write_report(tmp_path / "report.html", "t", {}, {}, {}, {}, steps)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert parse_page((tmp_path / "report.html").read_text()).commands == [text for _, text, shell in steps if shell]


def test_run_settings_flattens_the_options_of_either_layout():
    expected = {"model": "spatial", "box": 32, "z_dim": 2, "hidden_sizes": "[64, 64]", "epochs": 5}
    old = {"model": "spatial", "options": {"z_dim": 2, "hidden_sizes": [64, 64], "epochs": 5}, "box": 32}
    new = {"model": "spatial", "model_options": {"z_dim": 2, "hidden_sizes": [64, 64]}, "training": {"epochs": 5},
           "box": 32}
    assert run_settings(old) == run_settings(new) == expected
    assert list(run_settings(new)) == list(expected)
