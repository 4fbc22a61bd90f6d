"""The model as a graph: which node a layer is, what each op does to channels and positions, where a
conv's input channels come from, and the input-space receptive field of a layer's units.

Modules: `trace` (fx tracing, layer lookup, `find_conv`), `ops` (the op table: what each op does),
`sources` (`trace_source` + `Source`), `receptive` (`receptive_field(s)` + `ReceptiveField`),
`fold` (`effective_weights`: a BatchNorm folded into the conv before it), `expand` (`expanded_weights` +
`Expansion`, `ExpansionStop`: a unit's kernel on an earlier layer across the linear ops between them).
"""

from .expand import Expansion, ExpansionStop, expanded_weights
from .fold import effective_weights
from .ops import Window, conv_windows, is_elementwise
from .receptive import ReceptiveField, receptive_field, receptive_fields
from .sources import Source, trace_source
from .trace import describe, find_conv, layer_node, module_outputs, trace

__all__ = ["Expansion", "ExpansionStop", "ReceptiveField", "Source", "Window", "conv_windows", "describe",
           "effective_weights", "expanded_weights", "find_conv", "is_elementwise", "layer_node", "module_outputs",
           "receptive_field", "receptive_fields", "trace", "trace_source"]
