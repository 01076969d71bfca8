"""``report.html`` of `emgroup analyze`: one self-contained page — figures embedded as base64 PNG, inline CSS, no
script, no link to anything but its own sections — that opens from a file browser on any machine.

It holds what was run on what, the metrics against the truth, every figure of ``figures/`` with what it shows, the
RELION and cryoSPARC commands that continue from the outputs (:func:`next_steps`) and the settings.
"""

import base64
import html
import json
import shlex
from pathlib import Path

from emgroup import __version__
from emgroup.io.atomic import atomic_path

#: figures in the order shown: file name -> (heading, what it shows)
FIGURES = {
    "training_curves.png": ("Training curves", "Every column of the run's metrics.csv against the epoch (train and "
                                               "validation together): the loss should fall and flatten."),
    "latent_map.png": ("Latent map", "The latent means (two dimensions, or the first two principal components), "
                                     "coloured by cluster and, when the STAR carries it, by the truth."),
    "class_averages.png": ("Class averages", "Each cluster's particles brought into the model's frame by their "
                                             "inferred pose and averaged (class: particles)."),
    "class_decoded.png": ("Decoded classes", "What the generator draws at each cluster centre, in the canonical "
                                             "pose, without the CTF (class: particles)."),
    "latent_traversal.png": ("Latent traversal", "The generator (canonical pose) along the latent space: what "
                                                 "each latent direction changes."),
    "poses.png": ("Poses", "The inferred angle and shifts; with the truth in the STAR, each against the true "
                           "value (a diagonal: poses to trust)."),
    "denoised.png": ("Input and denoised particles", "Particles spread over the stack as they came in, the "
                                                     "model's reconstruction (denoised.mrcs) and, for simulated "
                                                     "data, the clean image."),
    "mask.png": ("Latent mask", "Which latent channels the group acts on."),
    "latent_swap.png": ("Latent swap", "Images decoded from the acted-on part of one particle's latent with the "
                                       "invariant part of another's."),
    "group_action.png": ("Group action", "Particles turned by g and the model's prediction of the turned particle."),
}
#: metrics.json keys -> what they measure
METRICS = {
    "rotation_circular_correlation": "in-plane angle vs the true one: circular correlation (1 = exact)",
    "rotation_circular_correlation_uniform": "the same, form for uniformly spread angles",
    "translation_pearson_x": "shift x vs the true one (image frame): Pearson correlation",
    "translation_pearson_y": "shift y vs the true one (image frame): Pearson correlation",
    "clustering_accuracy": "clusters vs rlnEmgroupTrueClass, best one-to-one matching (1 = all right)",
    "state_accuracy": "clusters vs the true states (rlnEmgroupTrueConformation), best one-to-one matching",
    "latent_conformation_abs_pearson": "the latent dimension closest to the true conformation: |Pearson|",
    "latent_conformation_dim": "that latent dimension (1-based)",
    "denoised_clean_correlation": "denoised particles vs the clean images: mean Pearson correlation",
    "input_clean_correlation": "input particles vs the clean images (for reference): mean Pearson correlation",
}
#: what RELION's 2-D classification of one class's particles is asked for (RELION 3.1 options)
CLASS2D_K, CLASS2D_ITERATIONS = 3, 25

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1150px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
nav a { margin-right: 1em; } img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f0f0f0; text-align: left; } td.number { text-align: right; font-family: monospace; }
pre { background: #f4f4f4; padding: 0.6em; white-space: pre-wrap; } .note { color: #555; }
"""


def write_report(path, heading: str, summary: dict, settings: dict, metrics: dict, figures: dict,
                 steps: list) -> None:
    """Write :func:`report_html` atomically at ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(report_html(heading, summary, settings, metrics, figures, steps), encoding="utf-8")


def report_html(heading: str, summary: dict, settings: dict, metrics: dict, figures: dict, steps: list) -> str:
    """The page: ``heading`` (what was run on what), ``summary`` ``{name: value}`` (particles, clusters...),
    ``settings`` ``{table title: {option: value}}``, ``metrics`` (metrics.json), ``figures`` ``{file name: PNG
    bytes}`` (shown in :data:`FIGURES` order), ``steps`` from :func:`next_steps` (commands in ``<pre
    class="command">``)."""
    sections = [("summary", "Summary", _table(summary))]
    if metrics:
        sections.append(("metrics", "Metrics against the truth", _table(
            {name: (f"{value:.4g}", METRICS.get(name, "")) for name, value in metrics.items()},
            header=("metric", "value", "what"))))
    for name, (title, caption) in FIGURES.items():
        if name in figures:
            image = base64.b64encode(figures[name]).decode("ascii")
            sections.append((Path(name).stem, title, f'<p class="note">{_text(caption)} '
                             f'(<code>figures/{_text(name)}</code>)</p>\n'
                             f'<img alt="{_text(title)}" src="data:image/png;base64,{image}">'))
    sections.append(("next", "Continue in RELION and cryoSPARC", "\n".join(
        f'<p>{_text(what)}</p>\n<pre class="{"command" if shell else "form"}">{_text(text)}</pre>'
        for what, text, shell in steps)))
    sections.append(("settings", "Settings", "\n".join(
        f"<h3>{_text(title)}</h3>\n{_table(table)}" for title, table in settings.items())))
    nav = " ".join(f'<a href="#{anchor}">{_text(title)}</a>' for anchor, title, _ in sections)
    body = "\n".join(f'<section id="{anchor}">\n<h2>{_text(title)}</h2>\n{content}\n</section>'
                     for anchor, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_text(heading)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{_text(heading)}</h1>\n"
            f'<p class="note">emgroup {__version__}: <code>emgroup analyze</code> report</p>\n'
            f"<nav>{nav}</nav>\n{body}\n</body>\n</html>\n")


def next_steps(cwd, outdir: str, counts, box: int, apix: float, ctf: bool, rotation_3d: bool,
               volumes: bool, stacks=()) -> list[tuple[str, str, bool]]:
    """``[(what it does, text, whether the text is a shell command)]`` continuing from the outputs in ``outdir`` (a
    path relative to ``cwd``, the folder `emgroup analyze` ran in) with RELION 3.1 and cryoSPARC, for the largest
    class (``counts``: particles per class, class 1 the largest). ``box`` px, ``apix`` Å/px; ``ctf``: the particles
    carry defocus; ``rotation_3d``: particles.star has rlnAngleRot/Tilt; ``volumes``: a volume analysis;
    ``stacks``: the input's image files (for the cryoSPARC import: the parameters of its job)."""
    out, q = Path(outdir), _quoted
    steps = [("Run these from the folder emgroup analyze ran in (image paths in the STAR files are relative to it):",
              f"cd {q(cwd)}", True)]
    if volumes:
        selected = out / "class001_volumes.star"
        return steps + [
            (f"The volumes of class 1 (the largest, {counts[0]} volumes), as a STAR file:",
             f"relion_star_handler --i {q(out / 'volumes.star')} --o {q(selected)} --select rlnClassNumber "
             "--minval 1 --maxval 1", True),
            ("The map the model draws for class 1 (statistics; open it in RELION's viewer or ChimeraX):",
             f"relion_image_handler --i {q(out / 'class_decoded' / 'class001.mrc')} --stats", True)]
    selected = out / "class001.star"
    job = Path("Class2D") / "emgroup_class001"
    steps += [
        ("The class averages in RELION's viewer:",
         f"relion_display --i {q(out / 'classes.star')} --display rlnImageName", True),
        (f"The particles of class 1 (the largest, {counts[0]} particles), as a STAR file:",
         f"relion_star_handler --i {q(out / 'particles.star')} --o {q(selected)} --select rlnClassNumber "
         "--minval 1 --maxval 1", True),
        (f"RELION's own 2-D classification of those particles into {CLASS2D_K} classes, with its own alignment "
         "(a check that the class is one view of one state):",
         f"mkdir -p {q(job)}\nrelion_refine --i {q(selected)} --o {q(job / 'run')} --K {CLASS2D_K} "
         f"--iter {CLASS2D_ITERATIONS} --tau2_fudge 2 --particle_diameter {0.8 * box * apix:.0f} --zero_mask "
         f"--flatten_solvent --psi_step 12 --offset_range 5 --offset_step 2{' --ctf' if ctf else ''} --norm --scale "
         "--dont_combine_weights_via_disc --pool 30 --j 4", True),
        ("Every particle turned and shifted into its class's frame by the pose emgroup inferred:",
         f"relion_stack_create --i {q(out / 'particles.star')} --o {q(out / 'aligned')} --apply_transformation",
         True)]
    if rotation_3d:
        steps.append(("A map of class 1 from its particles' inferred 3-D poses:",
                      f"relion_reconstruct --i {q(selected)} --o {q(out / 'class001_map.mrc')}"
                      f"{' --ctf' if ctf else ''}", True))
    patterns = sorted({str(Path(stack).resolve().parent / f"*{Path(stack).suffix}") for stack in stacks})
    steps.append(("cryoSPARC: an Import Particle Stack job reading particles.cs (poses and clusters in its "
                  "alignments fields) with these parameters:",
                  f"Particle meta path: {(Path(cwd) / out / 'particles.cs').resolve()}\n"
                  + "".join(f"Particle data path: {pattern}\n" for pattern in patterns)
                  + f"Pixel size (A): {apix:g}", False))
    return steps


def run_settings(config: dict) -> dict:
    """The run's ``config.json`` as a flat ``{setting: value}`` table: its plain entries, then those of each group
    of options (``model_options`` and ``training``, or the one ``options`` of older runs)."""
    groups = [value for value in config.values() if isinstance(value, dict)]
    return {key: value for key, value in config.items() if not isinstance(value, dict)} | {
        key: json.dumps(value) if isinstance(value, (list, dict)) else value for group in groups
        for key, value in group.items()}


NUMBER = ' class="number"'


def _table(rows: dict, header=None) -> str:
    """An HTML table of ``{name: value or tuple of values}``; numbers right-aligned."""
    head = "<tr>" + "".join(f"<th>{_text(h)}</th>" for h in header) + "</tr>\n" if header else ""
    lines = []
    for name, values in rows.items():
        cells = "".join(f"<td{NUMBER if _is_number(v) else ''}>{_text(v)}</td>"
                        for v in (values if isinstance(values, tuple) else (values,)))
        lines.append(f"<tr><th>{_text(name)}</th>{cells}</tr>")
    return f"<table>\n{head}" + "\n".join(lines) + "\n</table>"


def _quoted(path) -> str:
    return shlex.quote(str(path))


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _text(value) -> str:
    return html.escape(str(value))
