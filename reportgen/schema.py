"""The schema of report.json: the core report (what the dataset pass found) as pydantic models, and the
whole Report with every analysis' part (`report_model`), exported as JSON Schema (docs/report.schema.json).
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

SCHEMA_VERSION = 9   # 1: the first release (page context minus a blacklist); 2: data only, analyses by name;
                     # 3: input sizes as [height, width]; 4: `accuracy` is the accuracy analysis' part,
                     # model and dataset `class_ids`, model `resize_size` and `interpolation`;
                     # 5: a filter's `circuits` is the sum of `terms[]`, each conv term's channels in `conv`
                     # 6: trust scores (`trust` per filter and layer, `attribution_trust`), feature_vis
                     # `param`, `transparency` and `compare[]`, `amplitude_spectrum`
                     # 7: `concepts` per layer (NMF concepts) and its overview links
                     #    and `unit_labels` (every channel's label per layer, filter, overview)
                     # 8: model.checkpoints: `evolution` (accuracy, loss per checkpoint) and
                     #    `evolution_layers` (CKA per layer, each filter's strip over the checkpoints)
                     # 9: the lecture's other techniques: `inversion` and `deepdream` per layer (and
                     #    filter), `adversarial`, `texture`


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImageRef(_Strict):
    dataset_index: int
    name: str
    label: int
    class_: str = Field(alias="class")      # the true class's name ("class" is a Python keyword)
    pred: int | None
    pred_class: str | None
    image: str


class Prob(_Strict):
    label: int
    class_: str = Field(alias="class")
    prob: float


class Sample(ImageRef):
    top3: list[Prob]


class TopImage(ImageRef):
    score: float | None
    location: list[int]


class Patch(_Strict):
    dataset_index: int
    box: list[int]           # (top, left, bottom, right) in input pixels, bottom/right exclusive
    patch: str
    outlined: str


class ClassMean(_Strict):
    label: int
    class_: str = Field(alias="class")
    mean: float | None


class Histogram(_Strict):
    edges: list[float | None]    # bin i is (edges[i], edges[i+1]]; ±inf at the open ends are null
    counts: list[int]


class Overlay(_Strict):
    dataset_index: int
    image: str


class ActivationMaps(_Strict):
    dataset_index: int
    image: str
    grid: str
    columns: int


class Filter(_Strict):
    index: int
    page: str
    top_images: list[TopImage]
    top_patches: list[Patch]
    bottom_images: list[TopImage]
    top_classes: list[ClassMean]
    histogram: Histogram
    activation_overlays: list[Overlay]


class Layer(_Strict):
    name: str
    path: str
    conv_path: str | None
    slug: str
    output_shape: list[int]
    channels: int
    page: str
    activation_maps: list[ActivationMaps]
    absent: dict[str, str]       # analysis name → why it is not on this layer
    filters: list[Filter]


class ArchitectureRow(_Strict):
    path: str
    alias: str | None
    type: str
    output_shape: list[int]
    params: int


class ModelInfo(_Strict):
    sha256: str
    num_classes: int
    class_ids: list[str] | None = Field(description="a stable id per output (ImageNet's synset IDs), if known")
    source: str
    input_size: list[int] = Field(min_length=2, max_length=2, description="[height, width] in pixels")
    resize_size: list[int] = Field(min_length=2, max_length=2, description="[height, width] images are scaled "
                                   "to cover (aspect kept) before the centre crop to input_size")
    interpolation: str = Field(description="the resampling filter of that scaling ('bilinear', 'bicubic')")
    channels: int
    mean: list[float]
    std: list[float]
    architecture: list[ArchitectureRow]


class Skip(_Strict):
    dataset_index: int
    error: str


class DatasetInfo(_Strict):
    format: str
    split: str
    size: int
    used: int
    fingerprint: str
    classes: list[str]           # after dataset.labels matching, the model's classes: labels are output indices
    class_ids: list[str] | None = Field(description="a stable id per class (ImageNet's synset IDs), if known")
    skipped: list[Skip]
    skipped_count: int


class AnalysisStatus(_Strict):
    name: str
    version: int
    absent: str | None           # why it is not in the report (None when it is)


class Page(_Strict):
    title: str
    page: str


class Report(_Strict):
    schema_version: int
    title: str
    seed: int
    reportgen_version: str
    model: ModelInfo
    dataset: DatasetInfo
    samples: list[Sample]
    layers: list[Layer]
    analyses: list[AnalysisStatus]
    pages: list[Page]            # pages beyond the overview, layers and filters (analysis pages, build)
    provenance: dict[str, Any]


def report_model(analyses) -> type[Report]:
    """The Report schema with every analysis' parts: `report[name]`, `layer[name]`, `filter[name]`."""
    def extend(base, attr):
        fields = {a.name: (getattr(a, attr) | None, None) for a in analyses if getattr(a, attr) is not None}
        return create_model(base.__name__, __base__=base, **fields) if fields else base
    filter_m = extend(Filter, "FilterResult")
    layer_m = create_model("Layer", __base__=extend(Layer, "LayerResult"), filters=(list[filter_m], ...))
    return create_model("Report", __base__=extend(Report, "SiteResult"), layers=(list[layer_m], ...))


def json_schema(analyses) -> dict:
    return report_model(analyses).model_json_schema(by_alias=True)
