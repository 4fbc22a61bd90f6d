"""The representation space of a layer: 2-D maps (PCA, t-SNE), their trustworthiness, nearest neighbours.

Pure computation on arrays; the plot lives in `reportgen.render.plots`.

    features = global_average_pool(acts)            # (N, C, H, W) -> (N, C)
    points = embed(features, "tsne", seed=0)         # (N, 2), the same bytes for the same seed
    trust = trustworthiness(features, points, seed=0)
    queries = choose_queries(labels, 8, seed=0)      # (8,)
    near = nearest_neighbours(features, queries)     # (8, 8), the query itself excluded
    same = same_class_fraction(near, labels, queries)

t-SNE engine, chosen by measurement (this project's 2-core machine, shared with other jobs, so seconds are
noisy; Fashion-MNIST test images, PCA-50 of pixels; trustworthiness k=10 on a 3k subsample; openTSNE with
uniform affinities k=15, PCA init, n_jobs=1, 125+250 and 100+150 iterations):

    N       Barnes-Hut 125+250   FFT 125+250   Barnes-Hut 100+150   FFT 100+150
    1000     2.0 s (0.988)        5.8 s (0.989)  1.3 s (0.988)       3.7 s (0.989)
    2500     4.9 s (0.992)        8.4 s (0.992)  4.0 s (0.992)       6.1 s (0.992)
    5000    12.3 s (0.993)       10.0 s (0.993)  9.8 s (0.993)       6.3 s (0.992)
    10000   34.2 s (0.992)       16.6 s (0.991) 24.4 s (0.991)       7.7 s (0.991)

so Barnes-Hut below 4000 points and FFT from there on (the FFT's interpolation grid costs the same at any N,
so it only pays off once the O(N log N) tree walk grows past it). 100+150 iterations keep trustworthiness
within 0.001 of 125+250.

At 60k points (Fashion-MNIST train, the demo CNN's pooled 128-D features, CPU seconds of one thread; the
machine was loaded 4-8x, so wall seconds were 3-6x these): PCA-50 1.9 s, neighbours exact 15.6 s vs openTSNE's
Annoy 11.5 s (approximate, and its index differs with the thread count), FFT 100+150 iterations 9.4 s:
trustworthiness (k=10, 5k subsample) 0.9927 with either neighbour search. So the neighbours are exact and
the whole t-SNE runs in one thread: with 2 BLAS threads the PCA (hence every coordinate) comes out different
in the last bits, and the site must be the same bytes whatever the launch. `benchmarks/embedding.py`, one
run: 60k points in 30.1 s CPU (164 s wall at load 15), trustworthiness 0.9927; on the same random 5k subset
0.9940 against sklearn.manifold.TSNE()'s 0.9946 (4.1 s vs 28.6 s CPU).

One exact k-nearest-neighbour graph (`knn_graph`, in the PCA-50 space of `neighbour_space`) serves both
t-SNE's affinities and the explorer's "nearest neighbours" panel, so it is computed once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from reportgen.errors import DataError, ModelError, SpecError

__all__ = [
    "METHODS",
    "TsneSettings",
    "global_average_pool",
    "neighbour_space",
    "knn_graph",
    "TSNE_NEIGHBOURS",
    "embed",
    "tsne_settings",
    "trustworthiness",
    "choose_queries",
    "nearest_neighbours",
    "nearest_by_distance",
    "same_class_fraction",
    "embedding_record",
]

METHODS = ("tsne", "pca")
MIN_TSNE_POINTS = 30  # below this the uniform k-NN graph covers most points and the map collapses
PCA_DIMS = 50  # t-SNE neighbours are found in PCA-50 space: the usual practice, and exact k-NN stays cheap
FFT_FROM_POINTS = 4000  # see the table in the module docstring
TSNE_NEIGHBOURS = 15  # t-SNE's uniform affinities: each point's 15 nearest neighbours


@dataclass(frozen=True)
class TsneSettings:
    """How `embed` runs openTSNE for a given number of points."""

    gradient: str  # "bh" (Barnes-Hut) or "fft" (interpolation), openTSNE's negative_gradient_method
    exaggeration_iterations: int = 100  # early exaggeration (12) with momentum 0.5
    iterations: int = 150  # then plain optimisation with momentum 0.8


def tsne_settings(n_points: int) -> TsneSettings:
    """The engine and schedule `embed` uses for `n_points` (measurements in the module docstring)."""
    return TsneSettings(gradient="fft" if n_points >= FFT_FROM_POINTS else "bh")


def global_average_pool(activations: np.ndarray) -> np.ndarray:
    """(N, C, H, W) or (N, D) activations -> (N, C) or (N, D) float32 features (the spatial mean)."""
    acts = np.asarray(activations)
    if acts.ndim == 4:
        return acts.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
    if acts.ndim == 2:
        return acts.astype(np.float32, copy=False)
    raise ModelError(f"cannot pool activations of shape {acts.shape}; expected (N, C, H, W) or (N, D)")


def _check_features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ModelError("features contain NaN or infinity; the layer's activations are not finite")
    return x


def _pca(x: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    # sklearn flips component signs to a fixed convention, so the projection is reproducible
    n_components = min(n_components, x.shape[0], x.shape[1])
    with threadpool_limits(1):  # LAPACK's result depends on its thread count
        return PCA(n_components=n_components, svd_solver="full", random_state=seed).fit_transform(x)


def neighbour_space(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, D) features -> (N, min(D, 50)) float64: their PCA-50 projection when D > 50, where neighbours are
    searched (the usual t-SNE practice; exact search stays cheap)."""
    x = _check_features(features)
    return _pca(x, PCA_DIMS, seed) if x.shape[1] > PCA_DIMS else x


def knn_graph(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) int64 indices of each row's k nearest rows of `x` (N, D), Euclidean, exact, nearest first;
    the row itself excluded by index (a duplicate stays a neighbour). Needs k < N."""
    from sklearn.neighbors import NearestNeighbors

    x = _check_features(x)
    if not 0 < k < x.shape[0]:
        raise DataError(f"{k} nearest neighbours need at least {k + 1} points, got {x.shape[0]}")
    # brute force: in 50-D a tree prunes nothing; one thread makes ties and rounding the same on every run
    with threadpool_limits(1):
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
        return nn.kneighbors(return_distance=False).astype(np.int64)


def embed(features: np.ndarray, method: str, seed: int, graph: np.ndarray | None = None) -> np.ndarray:
    """Project (N, D) features to (N, 2) float32 points with PCA or t-SNE.

    The same bytes for a seed whatever the process's thread count (one thread, exact neighbours). PCA of
    fewer than two dimensions pads with zeros. t-SNE needs at least 30 points; it runs on
    `neighbour_space(features)` with the `knn_graph` of it, or `graph` (N, >= 15) if given (the same graph,
    computed once by the caller for other uses too; its first 15 columns are used).
    """
    if method not in METHODS:
        raise SpecError("embedding", f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    x = _check_features(features)
    if method == "pca":
        out = np.zeros((x.shape[0], 2))
        if x.shape[0] > 1:
            proj = _pca(x, 2, seed)
            out[:, : proj.shape[1]] = proj
        return out.astype(np.float32)
    if x.shape[0] < MIN_TSNE_POINTS:
        raise DataError(
            f"t-SNE needs at least {MIN_TSNE_POINTS} points, got {x.shape[0]}; use 'embedding: pca' for this layer"
        )
    x = neighbour_space(x, seed)
    graph = knn_graph(x, TSNE_NEIGHBOURS) if graph is None else np.asarray(graph)[:, :TSNE_NEIGHBOURS]
    if graph.shape != (x.shape[0], TSNE_NEIGHBOURS):
        raise DataError(f"a neighbour graph of shape {graph.shape} for {x.shape[0]} points; "
                        f"t-SNE needs ({x.shape[0]}, {TSNE_NEIGHBOURS})")
    return _tsne(x, graph, tsne_settings(x.shape[0]), seed)


def _tsne(x: np.ndarray, graph: np.ndarray, settings: TsneSettings, seed: int) -> np.ndarray:
    from openTSNE import TSNEEmbedding, affinity, initialization
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    # Uniform affinities read only the neighbours' indices; the distances are placeholders
    knn = PrecomputedNeighbors(graph, np.zeros(graph.shape))
    # n_jobs=1 (and one BLAS thread): with 2, openTSNE's gradient gives other coordinates (module docstring)
    with threadpool_limits(1):
        aff = affinity.Uniform(knn_index=knn, n_jobs=1)
        init = initialization.pca(x, random_state=seed)
        emb = TSNEEmbedding(init, aff, negative_gradient_method=settings.gradient, n_jobs=1, random_state=seed)
        emb = emb.optimize(settings.exaggeration_iterations, exaggeration=12, momentum=0.5)
        emb = emb.optimize(settings.iterations, momentum=0.8)
    return np.asarray(emb, dtype=np.float32)


def trustworthiness(
    features: np.ndarray, points: np.ndarray, k: int = 10, max_points: int = 3000, seed: int = 0
) -> float:
    """sklearn's trustworthiness of `points` (N, 2) as a map of `features` (N, D), in [0, 1].

    Computed on a random subsample of `max_points` (the cost is quadratic). `k` is lowered to below N/2
    as sklearn requires; fewer than 3 points give 1.0 (no neighbourhood can be broken).
    """
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    x = _check_features(features)
    y = np.asarray(points, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise DataError(f"points of shape {y.shape} do not match features of shape {x.shape}")
    n = x.shape[0]
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        x, y, n = x[keep], y[keep], max_points
    k = min(k, (n - 1) // 2)
    if k < 1:
        return 1.0
    with threadpool_limits(1):  # its distances go through BLAS: one thread, the same ranks on every launch
        return float(sk_trustworthiness(x, y, n_neighbors=k))


def choose_queries(labels: np.ndarray, n: int = 8, seed: int = 0) -> np.ndarray:
    """`n` distinct indices into `labels` (N,), one class after another so the sample spans the classes.

    Classes are visited in sorted order, each giving a random member per round; all N if n >= N.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(n, labels.size):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return np.array(chosen, dtype=np.int64)


def nearest_neighbours(
    features: np.ndarray, queries: np.ndarray, k: int = 8, metric: str = "euclidean"
) -> np.ndarray:
    """(Q, k) indices of the k nearest rows of `features` (N, D) to each query row, nearest first.

    Euclidean distance by default (the classic pixel-space vs feature-space comparison), or "cosine".
    The query itself is excluded by index, not by distance: a duplicate image stays a neighbour. Ties go
    to the lower index. Fewer than k columns when N - 1 < k.
    """
    # Written out rather than sklearn's kneighbors: that drops "itself" by distance, i.e. whichever of
    # several identical rows it meets first, and Q is small (8), so a (Q, N) distance matrix is cheap.
    x = _check_features(features)
    q = np.asarray(queries, dtype=np.int64).reshape(-1)
    if q.size and (q.min() < 0 or q.max() >= x.shape[0]):
        raise DataError(f"query indices must lie in [0, {x.shape[0]}), got {q.tolist()}")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0, 1.0, norms)
        dist = 1.0 - x[q] @ x.T  # (Q, N)
    elif metric == "euclidean":
        # one query at a time: exact (no |a|²+|b|²-2ab cancellation) without a (Q, N, D) temporary
        dist = np.stack([((x - x[i]) ** 2).sum(axis=1) for i in q]) if q.size else np.zeros((0, x.shape[0]))
    else:
        raise SpecError("metric", f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")
    return nearest_by_distance(dist, q, k)


def nearest_by_distance(dist: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) column indices of the k smallest of each row of `dist` (Q, N), row q's own column queries[q]
    left out; nearest first, ties to the lower index, fewer than k columns when N - 1 < k."""
    dist = np.array(dist, dtype=np.float64)
    q = np.asarray(queries, dtype=np.int64).reshape(-1)
    dist[np.arange(q.size), q] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")
    return order[:, : min(k, dist.shape[1] - 1)]


def same_class_fraction(neighbours: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q,) fraction of each query's neighbours (Q, k) that share its label; NaN for a query with none."""
    labels = np.asarray(labels)
    neighbours = np.asarray(neighbours)
    if neighbours.shape[1] == 0:
        return np.full(neighbours.shape[0], np.nan)
    same = labels[neighbours] == labels[np.asarray(queries)][:, None]  # (Q, k)
    return same.mean(axis=1)


def embedding_record(
    method: str,
    points: np.ndarray,
    dataset_indices: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    trust: float,
) -> dict:
    """The `report.json` entry of one layer's embedding:
    `{method, points: [[x, y, dataset_index, label, pred]], trustworthiness}`, coordinates to 4 decimals."""
    pts = np.asarray(points, dtype=np.float64)
    rows = [
        [round(float(x), 4), round(float(y), 4), int(i), int(lab), int(p)]
        for (x, y), i, lab, p in zip(pts, dataset_indices, labels, preds)
    ]
    return {"method": method, "points": rows, "trustworthiness": round(float(trust), 4)}
