"""Figures (matplotlib, Agg backend): latent maps, image galleries and grids, training curves, poses.

Every function draws one figure, saves it atomically as a PNG at ``path`` and returns the PNG's bytes (which
``report.html`` embeds). ``title``: the figure's heading (what it shows, what was run, on what).
"""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from emgroup.io.atomic import atomic_path  # noqa: E402

#: a categorical colouring uses a discrete colour map when it has at most this many values
MAX_CATEGORIES = 20


def _save(fig, path, title=None) -> bytes:
    """Save ``fig`` (headed by ``title``) as a PNG at ``path``, atomically; return the PNG's bytes."""
    if title:
        fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def embed_2d(z) -> tuple[np.ndarray, list[str]]:
    """``(points (N, 2), axis labels)``: ``z`` (N, 2) itself, or for k > 2 its first two principal components."""
    z = np.asarray(z, dtype=float).reshape(len(z), -1)
    if z.shape[1] == 2:
        return z, ["z1", "z2"]
    pca = PCA(2).fit(z)
    return pca.transform(z), [f"PC{i + 1} ({100 * r:.0f}% var.)" for i, r in enumerate(pca.explained_variance_ratio_)]


def latent_map(z, colourings: dict, path, title=None) -> bytes:
    """The latent means ``z`` (N, k), one panel per colouring ``{title: values (N,)}``: for k >= 2 a scatter of
    the points (see :func:`embed_2d`), integer values with at most :data:`MAX_CATEGORIES` levels in one colour
    each; for k = 1 a histogram of z1 stacked by level, or z1 against continuous values."""
    z = np.asarray(z, dtype=float).reshape(len(z), -1)
    points, labels = (z, ["z1", ""]) if z.shape[1] == 1 else embed_2d(z)
    fig, axes = plt.subplots(1, len(colourings), figsize=(4.5 * len(colourings), 4), squeeze=False,
                             layout="constrained")
    size = max(1.0, 20.0 / np.sqrt(max(len(points) / 100, 1)))
    for ax, (name, values) in zip(axes[0], colourings.items()):
        values = np.asarray(values)
        levels = np.unique(values)
        ylabel = labels[1]
        if np.allclose(values, np.round(values)) and len(levels) <= MAX_CATEGORIES:
            palette = plt.cm.tab10 if len(levels) <= 10 else plt.cm.tab20
            if z.shape[1] == 1:
                ax.hist([points[values == level, 0] for level in levels], bins=50, stacked=True,
                        color=[palette(i) for i in range(len(levels))], label=[f"{level:g}" for level in levels])
                ylabel = "particles"
            else:
                for i, level in enumerate(levels):
                    chosen = values == level
                    ax.scatter(points[chosen, 0], points[chosen, 1], s=size, linewidths=0, color=palette(i),
                               label=f"{level:g}")
            ax.legend(title=name, fontsize=7, markerscale=2, loc="best")
        elif z.shape[1] == 1:
            ax.scatter(points[:, 0], values, s=size, linewidths=0, alpha=0.6)
            ylabel = name
        else:
            fig.colorbar(ax.scatter(points[:, 0], points[:, 1], c=values, s=size, linewidths=0), ax=ax, label=name)
        ax.set(title=name, xlabel=labels[0], ylabel=ylabel)
    return _save(fig, path, title)


def image_grid(images, path, titles=None, row_labels=None, col_labels=None, title=None) -> bytes:
    """Images (R, C, D, D) as an R x C grid, each on its own grey scale; optional per-image ``titles`` (R, C)
    and row/column labels."""
    images = np.asarray(images)
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows + 0.3), squeeze=False, layout="constrained")
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r, c], cmap="gray", origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if titles is not None and titles[r][c]:
                ax.set_title(titles[r][c], fontsize=7)
            if col_labels is not None and r == rows - 1:
                ax.set_xlabel(col_labels[c], fontsize=7)
            if row_labels is not None and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
    return _save(fig, path, title)


def gallery(images, path, titles=None, columns: int = 8, title=None) -> bytes:
    """A gallery of images (n, D, D) in rows of ``columns``; blank panels pad the last row."""
    images = np.asarray(images)
    n, box = len(images), images.shape[-1]
    rows = -(-n // columns)
    cols = min(columns, n)
    padded = np.zeros((rows * cols, box, box), dtype=images.dtype)
    padded[:n] = images
    labels = list(titles or [""] * n) + [""] * (rows * cols - n)
    return image_grid(padded.reshape(rows, cols, box, box), path,
                      [labels[r * cols:(r + 1) * cols] for r in range(rows)], title=title)


def traversal_latents(z, steps: int = 6) -> tuple[np.ndarray, str]:
    """Latent vectors (steps, steps, k) on a grid over the two main axes of ``z`` (N, k) — the latent
    dimensions themselves for k <= 2, else principal axes — from the 5th to the 95th percentile, other
    directions at the mean (k = 1: one row, (1, steps, 1)); and what the rows and columns are, in words."""
    z = np.asarray(z, dtype=float).reshape(len(z), -1)
    k = z.shape[1]
    if k <= 2:
        centre, axes, names = np.zeros(k), np.eye(k), [f"z{i + 1}" for i in range(k)]
    else:
        pca = PCA(2).fit(z)
        centre, axes, names = pca.mean_, pca.components_, ["PC1", "PC2"]
    scores = (z - centre) @ axes.T
    lo, hi = np.percentile(scores, [5, 95], axis=0)
    levels = [np.linspace(lo[i], hi[i], steps) for i in range(len(axes))]
    if len(axes) == 1:
        return ((centre + levels[0][:, None] * axes[0])[None],
                f"{names[0]} from its 5th to its 95th percentile, left to right")
    grid = centre + levels[0][None, :, None] * axes[0] + levels[1][::-1, None, None] * axes[1]
    return grid, (f"columns: {names[0]} rising left to right, rows: {names[1]} rising upwards "
                  "(5th to 95th percentile)")


def training_curves(metrics: pd.DataFrame, path, title=None) -> bytes:
    """One panel per numeric column of a run's ``metrics.csv`` (one row per epoch) against the epoch; columns
    sharing a name after a ``train_``/``val_`` prefix share a panel."""
    epoch = metrics["epoch"] if "epoch" in metrics else pd.Series(np.arange(len(metrics)))
    numeric = [c for c in metrics.select_dtypes("number") if c != "epoch"]
    panels: dict[str, list[str]] = {}
    for column in numeric:
        panels.setdefault(column.removeprefix("train_").removeprefix("val_"), []).append(column)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax, (name, columns) in zip(axes.flat, panels.items()):
        for column in columns:
            ax.plot(epoch, metrics[column], marker="." if len(epoch) < 20 else None, label=column)
        ax.set(title=name, xlabel="epoch")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(fig, path, title)


def poses(theta, shift_px, path, truth=None, title=None) -> bytes:
    """Histograms of the in-plane angle ``theta`` (N,) radians (shown in degrees) and of the shifts ``shift_px``
    (N, 2) pixels (x, y). With ``truth`` — ``{"theta": predicted (N,) rad, "theta_true": (N,) rad, "origin": (N, 2)
    Å, "origin_true": (N, 2) Å}``, origins in the image frame as ``rlnOriginX/YAngst``, and optional ``"scores"``
    (3 numbers or None: circular correlation, Pearson x, Pearson y) — a second row plots each predicted against
    the true value."""
    rows = 1 if truth is None else 2
    fig, axes = plt.subplots(rows, 3, figsize=(12, 3.2 * rows), squeeze=False, layout="constrained")
    axes[0, 0].hist(np.degrees(theta), bins=72, range=(-180, 180))
    axes[0, 0].set(xlabel="theta (degrees)", ylabel="particles", title="inferred angle")
    for ax, values, axis in zip(axes[0, 1:], np.asarray(shift_px).T, "xy"):
        ax.hist(values, bins=60)
        ax.set(xlabel=f"shift {axis} (pixels)", title=f"inferred shift {axis} (model frame)")
    if truth is not None:
        size = max(1.0, 20.0 / np.sqrt(max(len(theta) / 100, 1)))
        scores = truth.get("scores") or (None, None, None)
        theta_true, predicted = np.asarray(truth["theta_true"]), np.asarray(truth["theta"])
        offset = np.angle(np.mean(np.exp(1j * (predicted - theta_true))))  # the model's frame is its own
        pairs = [(_wrapped_degrees(theta_true), _wrapped_degrees(predicted - offset), "angle (degrees)",
                  f"predicted {'−' if offset >= 0 else '+'} {abs(np.degrees(offset)):.0f}° (frame offset)",
                  "circular corr."),
                 *[(t, p, f"origin {axis} (Å, image frame)", "predicted", "Pearson") for t, p, axis in
                   zip(np.asarray(truth["origin_true"]).T, np.asarray(truth["origin"]).T, "xy")]]
        for ax, (true, predicted, name, ylabel, statistic), score in zip(axes[1], pairs, scores):
            ax.scatter(true, predicted, s=size, linewidths=0, alpha=0.6)
            ax.set(xlabel=f"true {name}", ylabel=ylabel,
                   title=f"{name}: {statistic} {score:.3f}" if score is not None else name)
    return _save(fig, path, title)


def _wrapped_degrees(angle) -> np.ndarray:
    """Radians to degrees in [-180, 180)."""
    return (np.degrees(angle) + 180) % 360 - 180


def mask_plot(mask, path, title=None) -> bytes:
    """A model's binary latent mask (any shape; flattened): which latent channels the group acts on."""
    mask = np.asarray(mask, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(max(4, 0.15 * len(mask)), 2), layout="constrained")
    ax.bar(np.arange(1, len(mask) + 1), mask)
    ax.set(xlabel="latent channel", ylabel="mask (1 = acted on)", ylim=(0, 1.05))
    return _save(fig, path, title)
