"""Clustering of latent vectors with scikit-learn: Ward agglomerative, k-means or a Gaussian mixture.

``n_clusters="auto"`` picks K in ``2..max_clusters``: for ``gmm`` by the lowest BIC, for ``kmeans`` and
``agglomerative`` by the highest silhouette score, each K fitted and scored on the same random subset of at most
``SELECTION_SAMPLE`` points; the chosen K is then fitted on all points.
Ward agglomerative clustering needs memory quadratic in the number of points, so above ``AGGLOMERATIVE_LIMIT``
points it is fitted on a random subset and every point joins the cluster with the nearest centroid.
Features wider than ``max_dims`` are clustered on their first ``max_dims`` principal components (a full
covariance in thousands of dimensions is neither affordable nor meaningful). Clusters are numbered 0..K-1 by
decreasing size; their centres are the mean input features of their members.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

METHODS = ("gmm", "kmeans", "agglomerative")
AGGLOMERATIVE_LIMIT = 10_000
SELECTION_SAMPLE = 2_000


@dataclass
class Clusters:
    """``labels`` (N,) in 0..K-1 (0 = largest cluster), ``centres`` (K, k) cluster means in feature space,
    ``counts`` (K,), and how K was chosen (``scores``: K -> BIC or silhouette, empty when K was given)."""

    labels: np.ndarray
    centres: np.ndarray
    counts: np.ndarray
    method: str
    scores: dict

    @property
    def n_clusters(self) -> int:
        return len(self.counts)


def cluster_latents(features, n_clusters: int | str = "auto", method: str = "gmm", max_clusters: int = 10,
                    seed: int = 0, kmeans_restarts: int = 10, max_dims: int = 32) -> Clusters:
    """Cluster ``features`` (N, k) into ``n_clusters`` (an int, or ``"auto"``) with ``method`` in :data:`METHODS`.

    ``kmeans_restarts`` is k-means' ``n_init``; ``seed`` makes k-means, the mixture and subsampling repeatable.
    """
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r} (expected one of {METHODS})")
    fit = {"gmm": _gmm, "kmeans": _kmeans, "agglomerative": _agglomerative}[method]
    dims = min(max_dims, len(features))  # PCA gives at most as many components as there are samples
    clustered = PCA(dims, random_state=seed).fit_transform(features) if features.shape[1] > dims else features
    scores = {}
    if n_clusters == "auto":
        sample = clustered[_subset(len(features), SELECTION_SAMPLE, seed)]
        for k in range(2, max(2, min(max_clusters, len(sample) - 1)) + 1):
            scores[k] = fit(sample, k, seed, kmeans_restarts, score=True)[1]
        best = (min if method == "gmm" else max)(scores, key=scores.get)
    else:
        best = int(n_clusters)
    labels, _ = fit(clustered, best, seed, kmeans_restarts, score=False)
    return _by_size(features, labels, method, scores)


def _gmm(features, k, seed, restarts, score):
    model = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-5).fit(features)
    return model.predict(features), model.bic(features) if score else None


def _kmeans(features, k, seed, restarts, score):
    labels = KMeans(k, n_init=restarts, random_state=seed).fit_predict(features)
    return labels, _silhouette(features, labels) if score else None


def _agglomerative(features, k, seed, restarts, score):
    fitted = _subset(len(features), AGGLOMERATIVE_LIMIT, seed)
    subset_labels = AgglomerativeClustering(k, linkage="ward").fit_predict(features[fitted])
    if len(fitted) < len(features):
        labels = _nearest(features, _means(features[fitted], subset_labels, k))
    else:
        labels = subset_labels
    return labels, _silhouette(features, labels) if score else None


def _silhouette(features, labels) -> float:
    if len(np.unique(labels)) < 2:
        return -1.0
    return float(silhouette_score(features, labels))


def _subset(n: int, size: int, seed: int) -> np.ndarray:
    """All of ``range(n)``, or a random sorted subset of ``size`` of them when n > size."""
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if n > size else np.arange(n)


def _nearest(features, centroids) -> np.ndarray:
    distances = np.sum(features**2, 1)[:, None] - 2 * features @ centroids.T + np.sum(centroids**2, 1)[None]
    return np.argmin(distances, 1)


def _means(features, labels, k) -> np.ndarray:
    """(k, d) mean feature vector of each cluster 0..k-1."""
    sums = np.zeros((k, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / np.bincount(labels, minlength=k)[:, None]


def _by_size(features, labels, method, scores) -> Clusters:
    """Renumber the non-empty clusters by decreasing size; centres are the members' mean features."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    new = np.empty(labels.max() + 1, dtype=np.int64)
    new[order] = np.arange(len(order))
    labels = new[labels]
    counts = np.bincount(labels)
    return Clusters(labels, _means(features, labels, len(counts)), counts, method, scores)
