"""reportgen.analyses.explorer's pieces that scale with the points: pixel-space neighbours read a chunk of
images at a time, checked against sklearn's exact search on all the pixels at once; and the alignment of the
maps of earlier checkpoints (Procrustes against scipy's, t-SNE started from the later map). The maps of a build
with checkpoints are checked in tests/browser/test_evolution_slider.py."""

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from reportgen.analyses.explorer import pixel_neighbours


def test_pixel_neighbours_read_in_chunks_match_sklearn_on_all_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 1, 20, 20), dtype=np.uint8)   # (N, C, H, W), small: no resizing
    read = []
    ctx = SimpleNamespace(model=SimpleNamespace(input_size=(20, 20)),
                          dataset=SimpleNamespace(image=lambda i: read.append(i) or images[i]))
    idx = np.arange(50)[::-1]                     # position p holds dataset image 49 - p
    queries = np.array([0, 7, 31])
    got = pixel_neighbours(ctx, idx, queries, k=5, chunk=8)
    assert max(read[3:3 + 8]) - min(read[3:3 + 8]) == 7   # after the 3 queries, 8 images at a time
    pixels = images[idx].reshape(50, -1).astype(np.float64)
    expected = NearestNeighbors(n_neighbors=6).fit(pixels).kneighbors(pixels[queries], return_distance=False)
    np.testing.assert_array_equal(got, expected[:, 1:])   # sklearn finds the query itself first
    np.testing.assert_array_equal(got, pixel_neighbours(ctx, idx, queries, k=5, chunk=1000))


def test_procrustes_undoes_a_similarity_transform_and_leaves_scipys_disparity():
    from scipy.spatial import procrustes as scipy_procrustes

    from reportgen.analyses.explorer import procrustes

    rng = np.random.default_rng(1)
    reference = rng.normal(size=(200, 2)) * [3.0, 1.0]
    turn = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]]) @ np.diag([1.0, -1.0])  # + reflection
    moved = reference @ turn * 0.2 + [5.0, -3.0]
    np.testing.assert_allclose(procrustes(moved, reference), reference, atol=1e-4)
    # with noise, what is left is scipy's disparity (both standardized, best rotation and scale)
    noisy = moved + rng.normal(scale=0.1, size=moved.shape)
    left = ((procrustes(noisy, reference) - reference) ** 2).sum() / ((reference - reference.mean(0)) ** 2).sum()
    assert left == pytest.approx(scipy_procrustes(reference, noisy)[2], rel=1e-4)


def test_a_tsne_started_from_a_later_map_keeps_the_points_where_they_were():
    from scipy.spatial import procrustes as scipy_procrustes

    from reportgen.analyses import embedding as emb
    from reportgen.analyses.explorer import embed_like

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3, size=(6, 20))   # overlapping: an independent map may lay them out otherwise
    later_feats = centres[np.arange(300) % 6] + rng.normal(size=(300, 20))
    earlier_feats = later_feats + rng.normal(scale=0.8, size=later_feats.shape)   # the same images, less trained
    later = emb.embed(later_feats, "tsne", seed=0)
    aligned = embed_like(earlier_feats, "tsne", 0, later)
    alone = emb.embed(earlier_feats, "tsne", seed=0)
    moved = ((aligned - later) ** 2).sum() / ((later - later.mean(0)) ** 2).sum()
    assert moved < 0.2 * scipy_procrustes(later, alone)[2]   # an independent map, even turned onto it, moves more
    assert emb.trustworthiness(earlier_feats, aligned) > emb.trustworthiness(earlier_feats, alone) - 0.01
    np.testing.assert_array_equal(aligned, embed_like(earlier_feats, "tsne", 0, later))   # deterministic
