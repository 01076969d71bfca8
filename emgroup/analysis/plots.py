"""Figures (matplotlib, Agg backend): latent maps, image galleries and grids, training curves, pose histograms.

Every function draws one figure and saves it atomically as a PNG at ``path``.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from emgroup.io.atomic import atomic_path  # noqa: E402

#: a categorical colouring uses a discrete colour map when it has at most this many values
MAX_CATEGORIES = 20


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def embed_2d(z) -> tuple[np.ndarray, list[str]]:
    """``(points (N, 2), axis labels)``: ``z`` (N, k) itself when k <= 2 (k = 1 gets a zero y), else its first two
    principal components."""
    z = np.asarray(z, dtype=float).reshape(len(z), -1)
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]), ["z1", ""]
    if z.shape[1] == 2:
        return z, ["z1", "z2"]
    pca = PCA(2).fit(z)
    return pca.transform(z), [f"PC{i + 1} ({100 * r:.0f}% var.)" for i, r in enumerate(pca.explained_variance_ratio_)]


def latent_map(z, colourings: dict, path) -> None:
    """Scatter of the latent means ``z`` (N, k) (see :func:`embed_2d`), one panel per colouring
    ``{title: values (N,)}``; integer values with at most :data:`MAX_CATEGORIES` levels get one colour each."""
    points, labels = embed_2d(z)
    fig, axes = plt.subplots(1, len(colourings), figsize=(4.5 * len(colourings), 4), squeeze=False)
    size = max(1.0, 20.0 / np.sqrt(max(len(points) / 100, 1)))
    for ax, (title, values) in zip(axes[0], colourings.items()):
        values = np.asarray(values)
        levels = np.unique(values)
        if np.allclose(values, np.round(values)) and len(levels) <= MAX_CATEGORIES:
            palette = plt.cm.tab10 if len(levels) <= 10 else plt.cm.tab20
            for i, level in enumerate(levels):
                chosen = values == level
                ax.scatter(points[chosen, 0], points[chosen, 1], s=size, linewidths=0, color=palette(i),
                           label=f"{level:g}")
            ax.legend(title=title, fontsize=7, markerscale=2, loc="best")
        else:
            fig.colorbar(ax.scatter(points[:, 0], points[:, 1], c=values, s=size, linewidths=0), ax=ax, label=title)
        ax.set(title=title, xlabel=labels[0], ylabel=labels[1])
    _save(fig, path)


def image_grid(images, path, titles=None, row_labels=None, col_labels=None, title=None) -> None:
    """Images (R, C, D, D) as an R x C grid, each on its own grey scale; optional per-image ``titles`` (R, C)
    and row/column labels."""
    images = np.asarray(images)
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows + 0.3), squeeze=False)
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
    if title:
        fig.suptitle(title)
    _save(fig, path)


def gallery(images, path, titles=None, columns: int = 8, title=None) -> None:
    """A gallery of images (n, D, D) in rows of ``columns``; blank panels pad the last row."""
    images = np.asarray(images)
    n, box = len(images), images.shape[-1]
    rows = -(-n // columns)
    cols = min(columns, n)
    padded = np.zeros((rows * cols, box, box), dtype=images.dtype)
    padded[:n] = images
    labels = list(titles or [""] * n) + [""] * (rows * cols - n)
    image_grid(padded.reshape(rows, cols, box, box), path, [labels[r * cols:(r + 1) * cols] for r in range(rows)],
               title=title)


def traversal_latents(z, steps: int = 6) -> tuple[np.ndarray, list[str]]:
    """Latent vectors (steps, steps, k) on a grid over the two main axes of ``z`` (N, k) — the latent
    dimensions themselves for k <= 2, else principal axes — from the 5th to the 95th percentile, other
    directions at the mean (k = 1: one row); and the names of the (row, column) axes."""
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
        return (centre + levels[0][:, None] * axes[0])[None], ["", names[0]]
    grid = centre + levels[0][None, :, None] * axes[0] + levels[1][::-1, None, None] * axes[1]
    return grid, [names[1], names[0]]


def training_curves(metrics: pd.DataFrame, path) -> None:
    """One panel per numeric column of a run's ``metrics.csv`` (one row per epoch) against the epoch; columns
    sharing a name after a ``train_``/``val_`` prefix share a panel."""
    epoch = metrics["epoch"] if "epoch" in metrics else pd.Series(np.arange(len(metrics)))
    numeric = [c for c in metrics.select_dtypes("number") if c != "epoch"]
    panels: dict[str, list[str]] = {}
    for column in numeric:
        panels.setdefault(column.removeprefix("train_").removeprefix("val_"), []).append(column)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, columns) in zip(axes.flat, panels.items()):
        for column in columns:
            ax.plot(epoch, metrics[column], label=column)
        ax.set(title=name, xlabel="epoch")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def pose_histograms(theta, shift_px, path) -> None:
    """Histograms of the in-plane angle ``theta`` (N,) radians (shown in degrees) and of the shifts
    ``shift_px`` (N, 2) pixels (x, y)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    axes[0].hist(np.degrees(theta), bins=72, range=(-180, 180))
    axes[0].set(xlabel="theta (degrees)", ylabel="particles")
    for ax, values, axis in zip(axes[1:], np.asarray(shift_px).T, "xy"):
        ax.hist(values, bins=60)
        ax.set(xlabel=f"shift {axis} (pixels)")
    fig.tight_layout()
    _save(fig, path)


def mask_plot(mask, path) -> None:
    """A model's binary latent mask (any shape; flattened): which latent channels the group acts on."""
    mask = np.asarray(mask, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(max(4, 0.15 * len(mask)), 2))
    ax.bar(np.arange(1, len(mask) + 1), mask)
    ax.set(xlabel="latent channel", ylabel="mask (1 = acted on)", ylim=(0, 1.05))
    _save(fig, path)
