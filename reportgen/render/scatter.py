"""A static picture of an explorer (the embedding scatter, coloured by true class) for print, where the
interactive Bokeh plot cannot run. Drawn from the points the report already holds (report.json's
`explorers[].points`: x, y, dataset index, class, prediction), in the site's class colours.
"""

import io

import numpy as np

from .plots import _palette


def scatter_png(points: list, class_names: list[str], dpi: int = 110) -> bytes:
    """PNG bytes of `points` (N rows of [x, y, index, class, prediction]) as a scatter, one colour per class,
    crosses for misclassified points, the legend below the plot; the same points give the same bytes."""
    import matplotlib
    matplotlib.use("Agg", force=False)   # no display: this runs in a terminal or CI
    from matplotlib.figure import Figure

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 5)   # (N, 5)
    fig = Figure(figsize=(6.4, 5.2), dpi=dpi)
    ax = fig.add_axes((0.02, 0.22, 0.96, 0.76))
    colors = _palette(len(class_names))
    for c, (name, color) in enumerate(zip(class_names, colors)):
        ok = (pts[:, 3] == c) & (pts[:, 4] == c)
        wrong = (pts[:, 3] == c) & (pts[:, 4] != c)
        ax.scatter(pts[ok, 0], pts[ok, 1], s=3, c=color, linewidths=0, label=name, rasterized=True)
        ax.scatter(pts[wrong, 0], pts[wrong, 1], s=9, c=color, marker="x", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=min(5, len(class_names)),
               fontsize=7, markerscale=3, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})   # no version stamp: same bytes each time
    return buf.getvalue()
