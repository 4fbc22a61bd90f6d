"""Analyses: every computation of the report, each one module following the contract in `reportgen.analysis`.

`ANALYSES` is the registry: the build runs them in dependency order (`requires`, `uses`); within a page,
their sections appear in this order. Math they share lives in the subpackages and modules they import
(featvis/, attribution/, kernels.py, embedding.py), which know nothing of reports.
"""

from .accuracy import Accuracy
from .adversarial import AdversarialExamples
from .amplitude_spectrum import AmplitudeSpectrum
from .attribution_maps import AttributionMaps, GuidedBackprop
from .attribution_trust import AttributionTrust
from .circuits import Circuits, FirstLayerFilters
from .concepts import Concepts
from .deepdream import DeepDream
from .evolution import Evolution, EvolutionLayers
from .explorer import LayerExplorer, OverviewExplorer
from .feature_vis import ClassModels, FeatureVis
from .inversion import Inversion
from .texture import Texture
from .trust import Trust
from .unit_labels import UnitLabels

ANALYSES = [Accuracy(), AmplitudeSpectrum(), FeatureVis(), Trust(), FirstLayerFilters(), ClassModels(), Circuits(),
            GuidedBackprop(), LayerExplorer(), OverviewExplorer(), AttributionMaps(),
            AttributionTrust(), UnitLabels(), Concepts(), Evolution(), EvolutionLayers(),
            DeepDream(), AdversarialExamples(), Inversion(), Texture()]

__all__ = ["ANALYSES"]
