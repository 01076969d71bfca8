"""`emgroup analyze` end to end: encode a stack with a trained model and write what it learned for RELION/cryoSPARC.

Two streamed passes over the particles (memory bounded by the batch): (1) encode — latents and poses into
``latents.h5``, the model's reconstructions into ``denoised.mrcs``; then clustering of the latent means;
(2) class averages of the particles brought into the canonical frame by their inferred pose. Volumes get the first
pass and the clustering; their reconstructions are one MRC file per volume.
Every output file is written atomically; ``report.html`` (:mod:`emgroup.analysis.report`) gathers the figures,
metrics and settings on one page. See ``docs/analyze.md`` for the files and their units.
"""

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from emgroup.analysis import plots, report
from emgroup.analysis.class_averages import class_averages
from emgroup.analysis.clustering import Clusters, cluster_latents
from emgroup.analysis.frames import class_frames, to_common_frame
from emgroup.analysis.inference import (POSE_KEYS, decode_latents, encode_stack, group_action_examples, inplane_pose,
                                        relion_pose_columns)
from emgroup.analysis.metrics import best_latent_correlation, clustering_accuracy, image_correlation, pose_metrics
from emgroup.data.poses import model_from_relion, relion_from_model
from emgroup.data.transforms import transform_images
from emgroup.io.atomic import atomic_path
from emgroup.io.cryosparc import write_cs
from emgroup.io.mrc import StackWriter, open_stack, write_stack, write_volume
from emgroup.io.star import format_image_name, parse_image_name, relative_to_cwd, write_star
from emgroup.models.base import GroupAction, Pose

POSE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")
#: input columns replaced by the inferred pose and cluster (the input's values move to :data:`INPUT_LABEL` columns)
REPLACED = (*POSE_LABELS, "rlnClassNumber")
#: ``rlnEmgroupInputAngleRot`` ...: the pose and class the particles came with, before emgroup's replaced them
INPUT_LABEL = "rlnEmgroupInput"
LATENT_LABEL = "rlnEmgroupLatent"
#: wider latents go into the STAR as their first STAR_PCS principal components (``rlnEmgroupLatentPC1..``)
STAR_LATENTS, STAR_PCS = 32, 10
#: encoding entries kept in memory (the rest, e.g. TARGET-VAE's q(t, r), stay in latents.h5 only)
IN_MEMORY = ("z", "z_std", *POSE_KEYS)
TRUE_CLASS, TRUE_CONFORMATION = "rlnEmgroupTrueClass", "rlnEmgroupTrueConformation"
#: a true conformation with at most this many values is a set of states, scored like classes (state_accuracy)
MAX_STATES = 10
#: the group-action figure: particles shown (nearest to the first cluster centres) and rotation angles (degrees)
ACTION_EXAMPLES, ACTION_ANGLES = 3, (0, 45, 90, 135, 180, 225, 270, 315)
#: particles shown beside their reconstruction in the denoising figure (spread evenly over the stack)
DENOISED_EXAMPLES = 8


@dataclass
class Options:
    """How to analyze: clusters (an int or "auto"), clustering method, batch size (particles), torch device,
    denoised images in the canonical pose, whether to write them at all, whether to bring every class into one
    frame (:mod:`emgroup.analysis.frames`), random seed, progress bars, whether to write ``report.html``."""

    clusters: int | str = "auto"
    cluster_method: str = "gmm"
    max_clusters: int = 10
    batch_size: int = 256
    device: str = "cpu"
    canonical: bool = False
    denoise: bool = True
    align_classes: bool = False
    seed: int = 0
    progress: bool = True
    report: bool = True


def analyze(model, stack, outdir, rundir=None, options: Options | None = None) -> dict:
    """Write every output of `emgroup analyze` for ``stack`` (a :class:`~emgroup.data.stack.Stack` of images or
    volumes, as ``model`` was trained on) and a trained ``model`` (eval mode, on ``options.device``) into
    ``outdir``; ``rundir`` supplies ``metrics.csv`` for the training curves and ``config.json`` for the report's
    settings. Images and volumes differ only in their :class:`_ImageOutputs` / :class:`_VolumeOutputs` (how
    reconstructions and tables are written, and the class-average step).
    Returns a summary: particle and cluster counts, and the metrics against ground truth (when the STAR has any)."""
    options = options or Options()
    outdir = Path(outdir)
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    n = len(stack)
    with contextlib.ExitStack() as files:
        h5 = files.enter_context(h5py.File(files.enter_context(atomic_path(outdir / "latents.h5")), "w"))
        outputs = (_ImageOutputs if stack.ndim == 2 else _VolumeOutputs)(stack, outdir, options, files)
        examples = _Examples(n, options.canonical)

        def decoded(indices, images, reconstructions):
            outputs.add(indices, images, reconstructions)
            examples.add(indices, images, reconstructions)

        encoding, clusters, swap = _encode_and_cluster(model, stack, h5, options, decoded if options.denoise else None)
        decoded_centres = decode_latents(model, clusters.centres, options.device)
        encoding, decoded_centres, averages = outputs.classes(model, encoding, clusters, decoded_centres, h5)
        table = outputs.table(encoding, clusters.labels)
        _store_analysis(h5, table, clusters, stack, options)
    outputs.write(table, decoded_centres, averages, clusters.counts)
    metrics = truth_metrics(stack.meta, encoding, clusters.labels, stack.apix) | outputs.metrics()
    _write_metrics(outdir, metrics)
    examples.clean = outputs.clean(examples.indices)
    figures = make_figures(model, outdir / "figures", outputs, encoding, clusters, averages, decoded_centres, swap,
                           rundir, options.device, metrics, examples if options.denoise else None)
    summary = {"particles": n, "clusters": clusters.n_clusters, "counts": clusters.counts.tolist(), "metrics": metrics}
    if options.report:
        _write_report(outputs, model, rundir, summary, figures)
    return summary


class _Outputs:
    """What differs between an analysis of images and one of volumes, gathered in the two subclasses
    :class:`_ImageOutputs` and :class:`_VolumeOutputs`: how reconstructions (:meth:`add`) and tables are written, the
    class step, and how figures and the report name and draw the data (``noun``: what the rows are, ``turns``: how
    the group-action figure turns them, ``volumes``, ``pictures``). The defaults here: no class step, no clean data."""

    def __init__(self, stack, outdir: Path, options: Options):
        self.stack, self.outdir, self.options = stack, outdir, options

    def classes(self, model, encoding: dict, clusters: Clusters, decoded_centres, h5) -> tuple:
        """(``encoding``, ``decoded_centres``, the class averages): nothing aligned or averaged."""
        return encoding, decoded_centres, None

    def metrics(self) -> dict:
        """Metrics of the reconstructions against clean data: none."""
        return {}

    def clean(self, indices) -> np.ndarray | None:
        """Clean data of the rows at ``indices``: none."""
        return None

    def next_steps(self, model, counts) -> list:
        """The report's RELION/cryoSPARC commands (:func:`emgroup.analysis.report.next_steps`)."""
        return report.next_steps(Path.cwd(), relative_to_cwd(self.outdir), counts, self.stack.box, self.stack.apix,
                                 model.uses_ctf, model.pose is Pose.SO3, self.volumes,
                                 () if self.volumes else self.stack.sources)


class _ImageOutputs(_Outputs):
    """What `emgroup analyze` writes for particle images: reconstructions streamed into ``denoised.mrcs`` (compared
    with ``clean.mrcs`` when `emgroup simulate` left one beside the input) + ``denoised.star``, ``particles.star``
    and ``.cs`` with the inferred RELION pose, and the class step: classes brought into one frame on request
    (:mod:`emgroup.analysis.frames`), class averages of the particles aligned by their pose
    (``class_averages.mrcs`` + ``classes.star``), the decoded centres (``class_decoded.mrcs``)."""

    noun, turns, volumes = "particles", "in-plane", False

    def __init__(self, stack, outdir: Path, options: Options, files: contextlib.ExitStack):
        super().__init__(stack, outdir, options)
        self.denoised = (files.enter_context(StackWriter(outdir / "denoised.mrcs", len(stack), stack.box, stack.apix))
                         if options.denoise else None)
        clean = _clean_stack(stack)
        compare = options.denoise and not options.canonical and clean is not None
        self.comparison = _DenoiseComparison(stack, clean) if compare else None

    def add(self, indices, images, reconstructions) -> None:
        """Write a batch's reconstructions (m, D, D) of the particles at ``indices`` (their ``images``)."""
        self.denoised.write(reconstructions)
        if self.comparison is not None:
            self.comparison.add(indices, images, reconstructions)

    def classes(self, model, encoding: dict, clusters: Clusters, decoded_centres, h5) -> tuple:
        """(``encoding`` and ``decoded_centres`` in one frame when ``align_classes`` asks (the frames go into
        ``h5``), the class averages (K, D, D) of the particles aligned by their pose)."""
        n = len(self.stack)
        if self.options.align_classes and "theta" in encoding:
            frames = class_frames(lambda z: decode_latents(model, z, self.options.device), clusters.centres,
                                  clusters.counts, shifts="shift" in encoding)
            theta, shift = to_common_frame(*inplane_pose(encoding, n), clusters.labels, frames)
            encoding = encoding | {"theta": theta, **({"shift": shift} if "shift" in encoding else {})}
            decoded_centres = transform_images(decoded_centres, *frames)
            h5["class_frames"] = np.column_stack([np.degrees(frames[0]), frames[1]])  # degrees, x px, y px
        averages, _ = class_averages(self.stack, clusters.labels, *inplane_pose(encoding, n), clusters.n_clusters,
                                     self.options.batch_size, self.options.progress, ctf=model.uses_ctf)
        return encoding, decoded_centres, averages

    def table(self, encoding: dict, labels) -> pd.DataFrame:
        """The particles table (:func:`particles_table`)."""
        return particles_table(self.stack.meta, encoding, labels, self.stack.apix, self.options.seed)

    def write(self, table: pd.DataFrame, decoded_centres, averages, counts) -> None:
        """``particles.star`` + ``.cs``, ``denoised.star``, ``class_averages.mrcs``, ``class_decoded.mrcs``,
        ``classes.star``."""
        outdir, optics, apix = self.outdir, self.stack.optics, self.stack.apix
        write_star(outdir / "particles.star", table, optics)
        write_cs(outdir / "particles.cs", table, optics, self.stack.records)
        if self.options.denoise:
            denoised_table = table.assign(
                rlnImageName=format_image_name(np.arange(len(table)), relative_to_cwd(outdir / "denoised.mrcs")))
            if self.options.canonical:  # the reconstructions are in the canonical frame: the identity pose
                denoised_table = denoised_table.assign(**{c: 0.0 for c in POSE_LABELS if c in table})
            write_star(outdir / "denoised.star", denoised_table, optics)
        write_stack(outdir / "class_averages.mrcs", averages, apix)
        write_stack(outdir / "class_decoded.mrcs", decoded_centres, apix)
        write_star(outdir / "classes.star", classes_table(counts, outdir / "class_averages.mrcs"), optics)

    def metrics(self) -> dict:
        """The reconstructions' agreement with the clean images (:class:`_DenoiseComparison`), when known."""
        return self.comparison.result() if self.comparison is not None else {}

    def clean(self, indices) -> np.ndarray | None:
        """The clean images of the particles at ``indices``, when known."""
        return self.comparison.clean[self.comparison.rows[indices]] if self.comparison is not None else None

    @staticmethod
    def pictures(data: np.ndarray) -> np.ndarray:
        """Images as they are."""
        return data


class _VolumeOutputs(_Outputs):
    """What `emgroup analyze` writes for volumes: each reconstruction as ``denoised/NNNNNN.mrc`` + ``denoised.star``,
    ``volumes.star`` (the input rows with ``rlnClassNumber`` and the latents), the decoded centres as
    ``class_decoded/classNNN.mrc``. A volume model infers no pose: no class step (nothing is aligned or averaged)."""

    noun, turns, volumes = "volumes", "about y", True

    def __init__(self, stack, outdir: Path, options: Options, files: contextlib.ExitStack):
        super().__init__(stack, outdir, options)
        for folder in ("class_decoded", *(["denoised"] if options.denoise else [])):
            (outdir / folder).mkdir(parents=True, exist_ok=True)
        self.denoised = [outdir / "denoised" / f"{i + 1:06d}.mrc" for i in range(len(stack))]

    def add(self, indices, volumes, reconstructions) -> None:
        """Write a batch's reconstructions (m, D, D, D) of the volumes at ``indices``."""
        for i, volume in zip(indices, reconstructions):
            write_volume(self.denoised[i], volume, self.stack.apix)

    def table(self, encoding: dict, labels) -> pd.DataFrame:
        """The input rows (their class moved to ``rlnEmgroupInputClassNumber``) with class and latents."""
        kept = _input_kept(self.stack.meta, ["rlnClassNumber"])
        return pd.concat([kept, _class_and_latents(labels, encoding["z"], len(kept), self.options.seed)], axis=1)

    def write(self, table: pd.DataFrame, decoded_centres, averages, counts) -> None:
        """``volumes.star``, ``class_decoded/classNNN.mrc``, ``denoised.star``."""
        write_star(self.outdir / "volumes.star", table, self.stack.optics)
        for k, volume in enumerate(decoded_centres):
            write_volume(self.outdir / "class_decoded" / f"class{k + 1:03d}.mrc", volume, self.stack.apix)
        if self.options.denoise:
            write_star(self.outdir / "denoised.star",
                       table.assign(rlnImageName=[relative_to_cwd(path) for path in self.denoised]), self.stack.optics)

    @staticmethod
    def pictures(data: np.ndarray) -> np.ndarray:
        """What a figure draws of volumes (n, D, D, D): their projections along z, (n, D, D)."""
        return data.sum(axis=-3)


def _encode_and_cluster(model, stack, h5, options: Options, decoded) -> tuple[dict, Clusters, np.ndarray | None]:
    """Encode ``stack`` into ``h5``'s group ``encoding`` (``decoded`` receives each batch's reconstructions, see
    :func:`encode_stack`) and cluster the latent means: (the encoding's :data:`IN_MEMORY` entries, the clusters,
    the latent-swap latents of :func:`_latent_swap` for a :class:`GroupAction` model, else None)."""
    stored = encode_stack(model, stack, h5.create_group("encoding"), options.batch_size, options.device, decoded,
                          options.canonical, options.progress)
    encoding = {name: stored[name][:] for name in IN_MEMORY if name in stored}
    z = encoding["z"].reshape(len(stack), -1)
    clusters = cluster_latents(z, options.clusters, options.cluster_method, options.max_clusters, options.seed)
    swap = _latent_swap(model, z, clusters, options.device) if isinstance(model, GroupAction) else None
    return encoding, clusters, swap


def particles_table(meta: pd.DataFrame, encoding: dict, labels, apix: float, seed: int = 0) -> pd.DataFrame:
    """The input particles with the inferred pose (RELION 3.1 labels, see
    :func:`emgroup.analysis.inference.relion_pose_columns`), ``rlnClassNumber`` (1-based cluster) and the latent
    means as ``rlnEmgroupLatent1..k`` (k <= :data:`STAR_LATENTS`; else their principal components
    ``rlnEmgroupLatentPC1..``, seeded by ``seed``). The input's pose and class move to ``rlnEmgroupInput*`` columns
    (:func:`_input_kept`): no RELION pose mixes the input's angles with emgroup's."""
    n = len(meta)
    return pd.concat([_input_kept(meta, REPLACED), relion_pose_columns(encoding, n, apix),
                      _class_and_latents(labels, encoding["z"], n, seed)], axis=1)


def _input_kept(meta: pd.DataFrame, replaced) -> pd.DataFrame:
    """``meta`` without its latents and its ``replaced`` labels, whose values go to ``rlnEmgroupInput<label>`` (the
    label without ``rln``) unless such a column is already there (it holds what came before an earlier emgroup
    analysis: kept as it is)."""
    moved = {f"{INPUT_LABEL}{c[3:]}": meta[c] for c in replaced if c in meta and f"{INPUT_LABEL}{c[3:]}" not in meta}
    kept = meta.drop(columns=[c for c in meta if c in replaced or c.startswith(LATENT_LABEL)])
    return kept.assign(**moved).reset_index(drop=True)


def _class_and_latents(labels, z, n: int, seed: int) -> pd.DataFrame:
    """``rlnClassNumber`` (1-based ``labels``) and the latent means ``z`` as ``rlnEmgroupLatent1..k``, or their
    first :data:`STAR_PCS` principal components (``rlnEmgroupLatentPC1..``, PCA seeded by ``seed``) when
    k > :data:`STAR_LATENTS`."""
    z = np.asarray(z, dtype=np.float64).reshape(n, -1)
    prefix = LATENT_LABEL
    if z.shape[1] > STAR_LATENTS:
        z, prefix = PCA(min(STAR_PCS, n), random_state=seed).fit_transform(z), f"{LATENT_LABEL}PC"
    return pd.DataFrame({"rlnClassNumber": np.asarray(labels) + 1,
                         **{f"{prefix}{i + 1}": column for i, column in enumerate(z.T)}})


def classes_table(counts, averages_path) -> pd.DataFrame:
    """One row per class average, as RELION tools read images (``rlnImageName``) and 2D-class references
    (``rlnReferenceImage``), with ``rlnClassNumber``, ``rlnClassDistribution`` (fraction of particles) and the
    particle count ``rlnEmgroupParticleCount``."""
    counts = np.asarray(counts)
    names = format_image_name(np.arange(len(counts)), relative_to_cwd(averages_path))
    return pd.DataFrame({"rlnImageName": names, "rlnReferenceImage": names,
                         "rlnClassNumber": np.arange(1, len(counts) + 1),
                         "rlnClassDistribution": counts / counts.sum(), "rlnEmgroupParticleCount": counts,
                         "rlnOpticsGroup": 1})


def truth_metrics(meta: pd.DataFrame, encoding: dict, labels, apix: float) -> dict:
    """Agreement with the truth the input STAR carries (simulated or benchmark data): in-plane pose (when the
    STAR has ``rlnAnglePsi`` and no out-of-plane tilt and the model infers a pose), clustering accuracy against
    ``rlnEmgroupTrueClass`` and, when ``rlnEmgroupTrueConformation`` takes 2 to :data:`MAX_STATES` values (states,
    such as closed and open), against it (``state_accuracy``), best |Pearson| of one latent dimension with
    ``rlnEmgroupTrueConformation``."""
    n, out = len(meta), {}
    truth = pose_truth(meta, encoding, apix)
    if truth is not None:
        has_shift = "shift" in encoding and np.ptp(truth["origin_true"]) > 0
        out |= pose_metrics(truth["theta"], truth["origin"] if has_shift else None, truth["theta_true"],
                            truth["origin_true"])
    if TRUE_CLASS in meta:
        out["clustering_accuracy"] = clustering_accuracy(meta[TRUE_CLASS].to_numpy(), labels)
    if TRUE_CONFORMATION in meta and meta[TRUE_CONFORMATION].nunique() in range(2, MAX_STATES + 1):
        out["state_accuracy"] = clustering_accuracy(meta[TRUE_CONFORMATION].to_numpy(), labels)
    if TRUE_CONFORMATION in meta and np.ptp(meta[TRUE_CONFORMATION]) > 0:
        r, dim = best_latent_correlation(np.asarray(encoding["z"]).reshape(n, -1), meta[TRUE_CONFORMATION].to_numpy())
        out |= {"latent_conformation_abs_pearson": r, "latent_conformation_dim": dim + 1}
    return out


def pose_truth(meta: pd.DataFrame, encoding: dict, apix: float) -> dict | None:
    """The inferred and the true in-plane pose, when the STAR has ``rlnAnglePsi`` and no out-of-plane tilt and the
    model infers a pose (else None): ``theta``, ``theta_true`` (N,) radians, ``origin``, ``origin_true`` (N, 2) Å —
    translations in the image frame (RELION's origin), independent of the canonical frame's angle."""
    inplane_truth = "rlnAnglePsi" in meta and not np.any(meta.get("rlnAngleTilt", pd.Series(0.0)).to_numpy() != 0)
    if not inplane_truth or not any(key in encoding for key in POSE_KEYS):
        return None
    psi = meta["rlnAnglePsi"] + meta.get("rlnAngleRot", 0.0)  # tilt 0: RELION's A = Rz(rot + psi)
    origin = meta.get("rlnOriginXAngst", 0.0), meta.get("rlnOriginYAngst", 0.0)
    theta_true, shift_true = model_from_relion(psi, *origin, apix)
    theta, shift = inplane_pose(encoding, len(meta))
    _, *true_origin = relion_from_model(theta_true, shift_true, apix)
    _, *origin = relion_from_model(theta, shift, apix)
    return {"theta": theta, "theta_true": np.asarray(theta_true), "origin": np.column_stack(origin),
            "origin_true": np.column_stack(true_origin)}


class _Examples:
    """The input and the reconstruction (in the canonical pose when ``canonical``) of :data:`DENOISED_EXAMPLES`
    particles spread evenly over a stack of ``n``, kept as the reconstructions stream past; ``clean``: their clean
    images when known (set by the caller)."""

    def __init__(self, n: int, canonical: bool):
        self.indices = np.unique(np.linspace(0, n - 1, min(DENOISED_EXAMPLES, n)).round().astype(int))
        self.canonical = canonical
        self.inputs, self.reconstructions, self.clean = [], [], None

    def add(self, indices, images, reconstructions):
        chosen = np.isin(indices, self.indices)
        self.inputs.extend(images[chosen])
        self.reconstructions.extend(reconstructions[chosen])


class _DenoiseComparison:
    """Mean per-image Pearson correlation with the clean images, of the reconstructions and of the input."""

    def __init__(self, stack, clean: np.ndarray):
        self.clean = clean
        self.rows = parse_image_name(stack.meta["rlnImageName"].to_numpy(dtype=str))[0]
        self.denoised, self.noisy = [], []

    def add(self, indices, images, reconstructions):
        clean = self.clean[self.rows[indices]]
        self.denoised.append(image_correlation(reconstructions, clean))
        self.noisy.append(image_correlation(images, clean))

    def result(self) -> dict:
        return {"denoised_clean_correlation": float(np.mean(np.concatenate(self.denoised))),
                "input_clean_correlation": float(np.mean(np.concatenate(self.noisy)))}


def _clean_stack(stack) -> np.ndarray | None:
    """``clean.mrcs`` (written by `emgroup simulate`) beside the input when it matches the stack's one image file."""
    if stack.path is None or len(stack.sources) != 1:
        return None
    path = stack.path.parent / "clean.mrcs"
    if not path.is_file():
        return None
    clean = open_stack(path)
    return clean if clean.shape == open_stack(stack.sources[0]).shape else None


def _store_analysis(h5, table: pd.DataFrame, clusters: Clusters, stack, options: Options) -> None:
    """Cluster labels, RELION poses, particle index and image names beside the encoding in latents.h5."""
    h5["class_number"] = table["rlnClassNumber"].to_numpy()
    h5["particle_index"] = np.arange(len(table))
    h5["image_name"] = stack.meta["rlnImageName"].to_numpy(dtype=str).astype(object)
    h5["cluster_centres"] = clusters.centres
    relion = h5.create_group("relion")
    for column in POSE_LABELS:
        if column in table:
            relion[column] = table[column].to_numpy()
    h5.attrs.update({"apix": stack.apix, "box": stack.box, "cluster_method": clusters.method,
                     "n_clusters": clusters.n_clusters, "clusters_requested": str(options.clusters),
                     "units": "theta rad; shift px (x, y); relion/* degrees and Å; class_number 1-based"})
    if clusters.scores:
        h5["cluster_scores"] = np.array(list(clusters.scores.items()), dtype=float)


def make_figures(model, folder: Path, outputs: _Outputs, encoding, clusters: Clusters, averages, decoded, swap, rundir,
                 device, metrics: dict, examples: "_Examples | None") -> dict:
    """All PNGs of `emgroup analyze` of ``outputs.stack`` into ``folder``, its data drawn as ``outputs.pictures``
    draws them (volumes as their projections along z). ``averages``: the class averages or None (volumes); ``swap``: latents from :func:`_latent_swap` or
    None; ``metrics``: :func:`truth_metrics` (scores on the pose figure); ``examples``: particles and their
    reconstructions, or None (no denoising). Each figure is headed by what was run on what. Returns ``{file name:
    PNG bytes}``."""
    stack, pictures = outputs.stack, outputs.pictures
    meta, n = stack.meta, len(stack)
    z = np.asarray(encoding["z"]).reshape(n, -1)
    context = run_description(model, outputs, rundir)
    figures = {}

    def save(name, draw, *args, title, **kwargs):
        figures[name] = draw(*args, path=folder / name, title=f"{title}\n{context}", **kwargs)

    colourings = {"cluster": clusters.labels + 1}
    colourings |= {name: meta[column].to_numpy() for name, column in
                   [("true class", TRUE_CLASS), ("true conformation", TRUE_CONFORMATION)] if column in meta}
    save("latent_map.png", plots.latent_map, z, colourings, title="latent means")
    titles = [f"{k + 1}: {c}" for k, c in enumerate(clusters.counts)]
    if averages is not None:
        save("class_averages.png", plots.gallery, averages, titles=titles, title="class averages (class: particles)")
    save("class_decoded.png", plots.gallery, pictures(decoded), titles=titles,
         title="generator at each cluster centre (class: particles)")
    grid, axes_described = plots.traversal_latents(z)
    images = pictures(decode_latents(model, grid.reshape(-1, z.shape[1]), device))
    save("latent_traversal.png", plots.image_grid, images.reshape(*grid.shape[:2], *images.shape[1:]),
         title=f"latent traversal ({axes_described})")
    curves = Path(rundir) / "metrics.csv" if rundir is not None else None
    if curves is not None and curves.is_file() and len(table := pd.read_csv(curves)):
        save("training_curves.png", plots.training_curves, table, title="training curves")
    if model.pose is not Pose.NONE:
        truth = pose_truth(meta, encoding, stack.apix)
        if truth is not None:
            truth["scores"] = [metrics.get(key) for key in ("rotation_circular_correlation", "translation_pearson_x",
                                                            "translation_pearson_y")]
        save("poses.png", plots.poses, *inplane_pose(encoding, n), truth=truth,
             title="inferred poses" + (" against the truth in the STAR" if truth is not None else ""))
    if examples is not None:
        rows = [examples.inputs, examples.reconstructions] + ([examples.clean] if examples.clean is not None else [])
        labels = ["input", "denoised (canonical pose)" if examples.canonical else "denoised", "clean (truth)"]
        names = [f"{i + 1} (class {clusters.labels[i] + 1})" for i in examples.indices]
        save("denoised.png", plots.image_grid, pictures(np.stack([np.stack(row) for row in rows])),
             titles=[names] + [[""] * len(names)] * (len(rows) - 1), row_labels=labels[:len(rows)],
             title="particles (number, class) and the model's reconstruction")
    if isinstance(model, GroupAction):
        save("mask.png", plots.mask_plot, model.channel_mask().detach().float().cpu().numpy(),
             title="latent channels the group acts on")
        images = pictures(decode_latents(model, swap.reshape(-1, swap.shape[-1]), device))
        save("latent_swap.png", plots.image_grid, images.reshape(*swap.shape[:2], *images.shape[1:]),
             title="rows: acted-on part z_v of one particle; columns: invariant part z_i of another")
        inputs = stack.images(np.sort(_nearest_particles(z, clusters, ACTION_EXAMPLES)))
        truth, predicted = group_action_examples(model, inputs, ACTION_ANGLES, device)
        rows = np.stack([truth, predicted], 1).reshape(-1, *truth.shape[1:])  # truth, prediction, truth, ...
        save("group_action.png", plots.image_grid, pictures(rows), row_labels=["T_g x", "predicted"] * len(inputs),
             col_labels=[f"{a:g}°" for a in ACTION_ANGLES],
             title="each particle turned by g (" + outputs.turns +
                   ") and the model's prediction D(Φ_g(E x))")
    return figures


def run_description(model, outputs: _Outputs, rundir) -> str:
    """What was run on what, for figure titles: model, run folder, particles file, particle count."""
    stack = outputs.stack
    run = f" from {relative_to_cwd(rundir)}/" if rundir is not None else ""
    source = f" on {relative_to_cwd(stack.path)}" if stack.path is not None else ""
    return f"{model.name} model{run}{source}, {len(stack)} {outputs.noun}"


def _write_report(outputs: _Outputs, model, rundir, summary: dict, figures: dict) -> None:
    """``report.html`` (:mod:`emgroup.analysis.report`) in ``outputs.outdir``: what was run, metrics, ``figures``
    ``{name: PNG bytes}``, the RELION/cryoSPARC commands that continue from the outputs, settings."""
    stack, outdir, counts = outputs.stack, outputs.outdir, summary["counts"]
    overview = {"model": model.name, "run": relative_to_cwd(rundir) if rundir is not None else "",
                "input": relative_to_cwd(stack.path) if stack.path is not None else "",
                outputs.noun: summary["particles"], "box (px)": stack.box,
                "pixel size (Å)": f"{stack.apix:g}", "clusters": summary["clusters"],
                "per class": ", ".join(f"{k + 1}: {c}" for k, c in enumerate(counts)), "output folder": outdir}
    settings = {"emgroup analyze": {key: str(value) for key, value in asdict(outputs.options).items()}}
    config_path = Path(rundir) / "config.json" if rundir is not None else None
    if config_path is not None and config_path.is_file():
        settings["emgroup train (the run's config.json)"] = report.run_settings(json.loads(config_path.read_text()))
    report.write_report(outdir / "report.html", f"emgroup analyze: {run_description(model, outputs, rundir)}",
                        overview, settings, summary["metrics"], figures, outputs.next_steps(model, counts))


def _nearest_particles(z, clusters: Clusters, count: int) -> np.ndarray:
    """Index of the particle nearest to each of the first ``count`` cluster centres."""
    return np.argmin(np.sum(z**2, 1)[None] - 2 * clusters.centres[:count] @ z.T, axis=1)


def _latent_swap(model: GroupAction, z, clusters: Clusters, device="cpu", count: int = 6) -> np.ndarray:
    """(c, c, k) latents with the group-acted part ``z_v`` of particle i and the invariant part ``z_i`` of particle
    j, for the particles i, j nearest to the first c <= ``count`` cluster centres (``z`` (N, k) latent means)."""
    nearest = torch.as_tensor(z[_nearest_particles(z, clusters, count)], dtype=torch.float32, device=device)
    c = len(nearest)
    with torch.inference_mode():
        swapped = model.swap(nearest.repeat_interleave(c, 0), nearest.repeat(c, 1))
    return swapped.float().cpu().numpy().reshape(c, c, -1)


def _write_metrics(outdir: Path, metrics: dict) -> None:
    """``metrics.json`` when there are metrics (the input carried truth)."""
    if metrics:
        with atomic_path(outdir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
