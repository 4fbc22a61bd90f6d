"""reportgen.analyses.embedding against independent computations: numpy SVD, a by-the-definition
trustworthiness, sklearn's NearestNeighbors and TSNE, torch's pooling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from reportgen.analyses import embedding
from reportgen.analyses.embedding import (
    choose_queries,
    embed,
    embedding_record,
    global_average_pool,
    knn_graph,
    nearest_by_distance,
    nearest_neighbours,
    neighbour_space,
    same_class_fraction,
    trustworthiness,
    tsne_settings,
)
from reportgen.errors import DataError, ModelError, SpecError
from reportgen.idx import load_idx_split
from tests.helpers.tiny import FASHION_DIR


@pytest.fixture(scope="module")
def digits():
    """600 8x8 digits (bundled with sklearn, no download): (600, 64) float features and labels."""
    x, y = load_digits(return_X_y=True)
    return x[:600].astype(np.float32), y[:600]


def naive_trustworthiness(x, y, k):
    """Venna & Kaski's definition, written out with loops: penalise points that enter the k-neighbourhood
    in the map by how far down they rank in the original space."""
    n = len(x)
    dx = ((x[:, None] - x[None]) ** 2).sum(-1)
    dy = ((y[:, None] - y[None]) ** 2).sum(-1)
    total = 0.0
    for i in range(n):
        rank_x = {j: r for r, j in enumerate([j for j in np.argsort(dx[i], kind="stable") if j != i], start=1)}
        near_y = [j for j in np.argsort(dy[i], kind="stable") if j != i][:k]
        total += sum(rank_x[j] - k for j in near_y if rank_x[j] > k)
    return 1 - 2 / (n * k * (2 * n - 3 * k - 1)) * total


def test_pca_matches_svd_projection_up_to_sign():
    x = np.random.default_rng(0).normal(size=(50, 6)) * [5, 3, 1, 1, 1, 1]
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T  # (50, 2)
    got = embed(x, "pca", seed=0)
    assert got.shape == (50, 2) and got.dtype == np.float32
    signs = np.sign((got * expected).sum(0))
    np.testing.assert_allclose(got * signs, expected, rtol=1e-4, atol=1e-4)


def test_pca_of_one_dimension_or_one_point_pads_with_zeros():
    line = np.arange(5, dtype=np.float32)[:, None]  # (5, 1)
    got = embed(line, "pca", seed=0)
    np.testing.assert_allclose(np.abs(got[:, 0]), np.abs(line[:, 0] - 2), atol=1e-5)
    assert (got[:, 1] == 0).all()
    assert (embed(np.ones((1, 3)), "pca", seed=0) == 0).all()


def test_tsne_engine_is_chosen_by_size():
    assert tsne_settings(3999).gradient == "bh"
    assert tsne_settings(4000).gradient == "fft"
    assert tsne_settings(10_000).gradient == "fft"


@pytest.mark.parametrize("gradient", ["bh", "fft"])
def test_tsne_is_deterministic_for_a_seed(digits, monkeypatch, gradient):
    # both engines on a small set, with a short schedule: determinism does not need convergence
    short = embedding.TsneSettings(gradient=gradient, exaggeration_iterations=20, iterations=30)
    monkeypatch.setattr(embedding, "tsne_settings", lambda n: short)
    x = digits[0][:300]
    first = embed(x, "tsne", seed=3)
    assert first.shape == (300, 2) and first.dtype == np.float32 and np.isfinite(first).all()
    assert first.tobytes() == embed(x, "tsne", seed=3).tobytes()
    assert not np.array_equal(first, embed(x, "tsne", seed=4))


def test_tsne_keeps_neighbourhoods_as_well_as_sklearn(digits):
    x, _ = digits
    ours = embed(x, "tsne", seed=0)
    with threadpool_limits(1):  # sklearn's OpenMP threads spin-wait for each other on shared cores
        theirs = TSNE(random_state=0).fit_transform(x)
    t_ours, t_theirs = trustworthiness(x, ours), trustworthiness(x, theirs)
    assert t_ours >= t_theirs - 0.01, (t_ours, t_theirs)
    assert t_ours > 0.95


def test_tsne_reduces_wide_features_with_pca_first(digits, monkeypatch):
    seen = []
    real = embedding._tsne
    monkeypatch.setattr(embedding, "_tsne", lambda x, g, s, seed: seen.append(x.shape) or real(x, g, s, seed))
    wide = np.hstack([digits[0][:100]] * 2)  # (100, 128)
    embed(wide, "tsne", seed=0)
    embed(wide[:, :40], "tsne", seed=0)
    assert seen == [(100, 50), (100, 40)]


@pytest.fixture(scope="module")
def fashion():
    """2000 Fashion-MNIST test images (shipped with the repo) as (2000, 784) pixels in [0, 1], and labels."""
    images, labels = load_idx_split(FASHION_DIR, "test")
    return images[:2000].reshape(2000, -1).astype(np.float32) / 255, labels[:2000]


@pytest.mark.parametrize("gradient", ["bh", "fft"])
def test_tsne_is_the_same_bytes_whatever_the_thread_count(fashion, monkeypatch, gradient):
    # LAPACK's PCA of these 784-D pixels differs in the last bits between 1 and 2 threads; embed pins one
    short = embedding.TsneSettings(gradient=gradient, exaggeration_iterations=20, iterations=30)
    monkeypatch.setattr(embedding, "tsne_settings", lambda n: short)
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                runs.append((embed(fashion[0], "tsne", seed=1), embed(fashion[0], "pca", seed=1)))
    finally:
        torch.set_num_threads(before)
    assert runs[0][0].tobytes() == runs[1][0].tobytes()
    assert runs[0][1].tobytes() == runs[1][1].tobytes()


def test_knn_graph_is_the_exact_neighbours_by_brute_force(digits):
    x = neighbour_space(digits[0], seed=0)  # 64 dims > 50: the PCA-50 projection
    assert x.shape == (600, 50)
    graph = knn_graph(x, 15)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)  # (600, 600), written out
    np.fill_diagonal(d, np.inf)
    expected_dist = np.sort(d, axis=1)[:, :15]
    assert graph.shape == (600, 15) and (graph != np.arange(600)[:, None]).all()
    np.testing.assert_allclose(np.take_along_axis(d, graph, 1), expected_dist, rtol=1e-9)
    with pytest.raises(DataError, match=r"^15 nearest neighbours need at least 16 points, got 10$"):
        knn_graph(x[:10], 15)


def test_embed_uses_the_graph_it_is_given(digits, monkeypatch):
    x = digits[0][:300]
    graph = knn_graph(neighbour_space(x, 0), 20)  # more columns than t-SNE reads
    short = embedding.TsneSettings(gradient="bh", exaggeration_iterations=20, iterations=30)
    monkeypatch.setattr(embedding, "tsne_settings", lambda n: short)
    assert embed(x, "tsne", seed=0, graph=graph).tobytes() == embed(x, "tsne", seed=0).tobytes()
    shuffled = np.roll(graph, 1, axis=0)  # another graph: another map
    assert embed(x, "tsne", seed=0, graph=shuffled).tobytes() != embed(x, "tsne", seed=0).tobytes()
    with pytest.raises(DataError, match=r"^a neighbour graph of shape \(300, 5\) for 300 points; t-SNE needs"):
        embed(x, "tsne", seed=0, graph=graph[:, :5])


def test_embed_errors_name_the_fix():
    with pytest.raises(SpecError) as err:
        embed(np.zeros((40, 3)), "umap", seed=0)
    assert str(err.value) == "embedding: unknown method 'umap'; expected one of tsne, pca"
    with pytest.raises(DataError) as err:
        embed(np.random.default_rng(0).normal(size=(29, 3)), "tsne", seed=0)
    assert str(err.value) == "t-SNE needs at least 30 points, got 29; use 'embedding: pca' for this layer"
    bad = np.zeros((40, 3))
    bad[3, 1] = np.nan
    with pytest.raises(ModelError, match="^features contain NaN or infinity; the layer's activations are not finite$"):
        embed(bad, "pca", seed=0)
    with pytest.raises(DataError, match=r"^features must be a non-empty \(N, D\) array, got shape \(0, 3\)$"):
        embed(np.zeros((0, 3)), "pca", seed=0)


def test_trustworthiness_matches_the_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = x[:, :2] + rng.normal(size=(40, 2)) * 0.5
    assert trustworthiness(x, y, k=5) == pytest.approx(naive_trustworthiness(x, y, 5), abs=1e-12)
    assert trustworthiness(x, x, k=5) == 1.0
    # k is lowered below N/2 for tiny sets; two points cannot break a neighbourhood
    assert trustworthiness(x[:7], y[:7], k=10) == pytest.approx(naive_trustworthiness(x[:7], y[:7], 3), abs=1e-12)
    assert trustworthiness(x[:2], y[:2]) == 1.0


def test_trustworthiness_subsample_is_deterministic_and_representative(digits):
    x, _ = digits
    y = embed(x, "pca", seed=0)
    full = trustworthiness(x, y, max_points=600)
    sub = trustworthiness(x, y, max_points=300, seed=5)
    assert sub == trustworthiness(x, y, max_points=300, seed=5)
    assert sub != full and abs(sub - full) < 0.03
    with pytest.raises(DataError, match=r"points of shape \(10, 2\) do not match features of shape \(600, 64\)"):
        trustworthiness(x, y[:10])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_neighbours_match_sklearn(metric):
    x = np.random.default_rng(2).normal(size=(300, 16))
    queries = np.array([0, 17, 299, 150])
    ours = nearest_neighbours(x, queries, k=8, metric=metric)
    nn = NearestNeighbors(n_neighbors=9, metric=metric, algorithm="brute").fit(x)
    theirs = nn.kneighbors(x[queries], return_distance=False)
    assert (theirs[:, 0] == queries).all()  # continuous data: the query is its own nearest
    np.testing.assert_array_equal(ours, theirs[:, 1:])


def test_nearest_neighbours_exclude_the_query_by_index_not_by_distance():
    x = np.array([[0.0, 0], [5, 5], [0, 0], [1, 0], [0, 3]])  # rows 0 and 2 are the same image
    np.testing.assert_array_equal(nearest_neighbours(x, [0, 2], k=2), [[2, 3], [0, 3]])
    assert nearest_neighbours(x, [1], k=8).shape == (1, 4)  # only N - 1 others exist
    with pytest.raises(DataError, match=r"^query indices must lie in \[0, 5\), got \[5\]$"):
        nearest_neighbours(x, [5])
    with pytest.raises(SpecError, match="^metric: unknown metric 'l1'; expected 'euclidean' or 'cosine'$"):
        nearest_neighbours(x, [0], metric="l1")


def test_same_class_fraction_by_hand():
    labels = np.array([0, 0, 1, 1, 0])
    neighbours = np.array([[1, 2, 4], [3, 2, 0]])  # query 0 (class 0), query 2 (class 1)
    np.testing.assert_allclose(same_class_fraction(neighbours, labels, [0, 2]), [2 / 3, 2 / 3])
    np.testing.assert_allclose(same_class_fraction(np.array([[1, 4]]), labels, [0]), [1.0])
    assert np.isnan(same_class_fraction(np.zeros((1, 0), int), labels, [0])).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 12), st.integers(0, 2**16))
def test_choose_queries_spans_classes(labels, n, seed):
    labels = np.array(labels)
    q = choose_queries(labels, n, seed)
    assert len(q) == min(n, len(labels)) and len(set(q.tolist())) == len(q)
    np.testing.assert_array_equal(q, choose_queries(labels, n, seed))
    # round robin: a class is picked twice more often than another only once the other has run out
    chosen = {c: int((labels[q] == c).sum()) for c in np.unique(labels)}
    for a in chosen:
        for b in chosen:
            assert chosen[a] <= chosen[b] + 1 or chosen[b] == (labels == b).sum()


def test_global_average_pool_matches_torch():
    acts = np.random.default_rng(3).normal(size=(4, 6, 5, 7)).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(acts), 1).flatten(1).numpy()
    np.testing.assert_allclose(global_average_pool(acts), expected, rtol=1e-5, atol=1e-6)
    logits = np.ones((4, 10), np.float64)
    assert global_average_pool(logits).dtype == np.float32 and global_average_pool(logits).shape == (4, 10)
    with pytest.raises(ModelError, match=r"^cannot pool activations of shape \(4, 6, 5\); expected"):
        global_average_pool(acts[..., 0])


def test_embedding_record_is_the_report_json_shape():
    rec = embedding_record("tsne", np.array([[1.234567, -2.0], [0.5, 0.25]]), [10, 11], [3, 1], [3, 2], 0.987654)
    assert rec == {"method": "tsne", "points": [[1.2346, -2.0, 10, 3, 3], [0.5, 0.25, 11, 1, 2]],
                   "trustworthiness": 0.9877}  # fmt: skip
