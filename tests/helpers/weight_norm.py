"""A new analysis as a user would add one: one module (this) and one template (templates/analyses/weight_norm.html).

Each spec filter's L2 norm of its conv weights, on the filter pages and in report.json.
"""

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from reportgen.analysis import Analysis
from reportgen.errors import ModelError
from reportgen.graph import find_conv


class WeightNormResult(BaseModel):
    norm: float                  # ‖W_f‖₂ over all input channels and kernel positions
    rank: int                    # 1 = the layer's largest among the spec filters


class WeightNorm(Analysis):
    name = "weight_norm"
    version = 1
    per_layer = True
    templates = {"filter": "analyses/weight_norm.html"}
    template_folder = str(Path(__file__).parent / "templates")
    FilterResult = WeightNormResult

    def applies(self, ctx, layer=None):
        if layer is None:
            return None
        try:
            find_conv(ctx.model.module, layer.path)
        except ModelError as exc:
            return str(exc)
        return None

    def compute(self, ctx, layer):
        _, conv, _ = find_conv(ctx.model.module, layer.path)
        w = conv.weight.detach().cpu().double().numpy()[layer.filters]        # (F, Cin, kh, kw)
        return {"filters": np.array(layer.filters), "norm": np.sqrt((w ** 2).reshape(len(w), -1).sum(1))}

    def report(self, ctx, artifacts, out):
        for path, art in artifacts.items():
            ranks = np.argsort(np.argsort(-art["norm"], kind="stable"), kind="stable") + 1
            for f, norm, rank in zip(art["filters"].tolist(), art["norm"], ranks):
                out.filter(path, f, {"norm": float(norm), "rank": int(rank)})
