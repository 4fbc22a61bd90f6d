"""reportgen.analyses.explorer's pieces that scale with the points: pixel-space neighbours read a chunk of
images at a time, checked against sklearn's exact search on all the pixels at once."""

from types import SimpleNamespace

import numpy as np
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
