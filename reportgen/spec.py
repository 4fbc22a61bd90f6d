"""The spec: a declarative schema with every default in one place, and its loader.

`load_spec(path)` reads YAML, validates every key (collecting all errors, each with its
dotted key path like `layers[1].name`) and resolves relative paths against the spec's
directory. Checks that need the model (layer names, filter ranges) happen in `layers.py`
and raise `SpecError` with the same key paths.
"""

import glob
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from .errors import SpecError


class _Section(BaseModel):
    # unknown keys are errors: a typo must not be silently ignored
    model_config = ConfigDict(extra="forbid")


class CheckpointEntry(_Section):
    """One checkpoint of `model.checkpoints`: its name in the report and its file."""
    name: str = Field(min_length=1)
    path: Path


class ModelSpec(_Section):
    """Where the model comes from: exactly one of torchvision / timm / checkpoint / factory, or a checkpoint whose
    weights go into a factory's or timm's architecture."""
    torchvision: str | None = None
    weights: str | None = None
    timm: str | None = Field(None, description="a timm model name, with or without a pretrained tag "
                                               "(resnet50, resnet50.a1_in1k)")
    # default true: in timm the name (and its tag) picks the weights, and a report on random weights that
    # nobody asked for is worthless; offline, a missing weights file is a clear error, not a silent random model
    pretrained: bool | None = Field(None, description="timm: load timm's weights for the name (default: true, "
                                                      "unless 'checkpoint' gives the weights); false: random weights")
    pretrained_file: Path | None = Field(None, description="timm: a local copy of timm's weights file for the name, "
                                                           "read by timm's own loader (its pretrained 'file' override)")
    checkpoint: Path | None = None
    checkpoints: list[CheckpointEntry] | str | None = Field(None, description=(
        "checkpoints of one architecture, oldest first: a list of {name, path}, or a glob (natural sort, names "
        "from the file stems); at least 2. The report is built for the last one; an Evolution page compares them"))
    factory: str | None = None
    # Python API only (reportgen.build): an object is no YAML value, and no file to hash or to name in the report
    module: object = Field(None, exclude=True, description=(
        "Python API: an in-memory torch nn.Module (copied, so the caller's stays as it was); with 'checkpoint(s)' "
        "it is the architecture the weights are loaded into"))
    trust_checkpoint: bool = False
    input_size: int | tuple[int, int] | None = Field(
        None, description="the side of a square input, or [height, width]; each 8 to 2048 px")
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | Path | None = None
    channels: Literal[1, 3] | None = None

    @field_validator("input_size", mode="before")
    @classmethod
    def _input_size(cls, v):
        """An int (a square's side) or [height, width], each 8 to 2048 px. Checked before pydantic's coercion:
        `true` or 40.5 is no size, and one message with the fix beats a union's two."""
        def side(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)
        lo, hi = 8, 2048
        if v is None:
            return v
        if side(v):
            if not lo <= v <= hi:
                raise ValueError(f"{v} px is out of range; each side must be {lo} to {hi} pixels")
            return v
        if isinstance(v, (list, tuple)) and all(side(x) for x in v):
            if len(v) != 2:
                raise ValueError(f"{list(v)} is not [height, width]; give two sides, or one int for a square")
            if not all(lo <= x <= hi for x in v):
                raise ValueError(f"{list(v)} is out of range; each side must be {lo} to {hi} pixels")
            return (v[0], v[1])
        raise ValueError(f"{v!r} is not a size; give one int for a square (e.g. 224) or [height, width] "
                         f"(e.g. [40, 32])")

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints(cls, v, info):
        if v is None:
            return v
        if info.data.get("checkpoint") is not None:
            raise ValueError("the last of 'checkpoints' is the model's checkpoint; remove 'checkpoint'")
        if isinstance(v, list):
            if len(v) < 2:
                raise ValueError(f"{len(v)} checkpoint{'s' if len(v) != 1 else ''}: give at least 2 to compare "
                                 "(or use 'checkpoint' for one)")
            names = [e.name for e in v]
            if len(set(names)) != len(names):
                raise ValueError(f"two checkpoints share a name: {names}")
        elif not v.strip():
            raise ValueError("give a list of {name, path} or a glob like 'runs/epoch*.pt'")
        return v

    @field_validator("module")
    @classmethod
    def _module(cls, v):
        from torch import nn   # only here: a YAML spec never has a module, and importing torch takes seconds
        if v is not None and not isinstance(v, nn.Module):
            raise ValueError(f"a {type(v).__name__} is not a torch nn.Module; pass the model object itself "
                             "(reportgen.build({'model': {'module': net, ...}, ...}))")
        return v

    @field_validator("factory")
    @classmethod
    def _factory_syntax(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"{v!r} is not 'module:callable' (e.g. 'mynet:build' for build() in mynet.py)")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if self.torchvision and (self.checkpoint or self.checkpoints or self.factory):
            raise ValueError("give either 'torchvision' or 'checkpoint'/'factory', not both")
        if self.timm and (self.torchvision or self.factory):
            raise ValueError(f"give either 'timm' or '{'torchvision' if self.torchvision else 'factory'}', not both")
        if self.module is not None and (self.torchvision or self.timm or self.factory):
            raise ValueError("give either 'module' or 'torchvision'/'timm'/'factory', not both")
        if not (self.torchvision or self.timm or self.checkpoint or self.checkpoints or self.factory
                or self.module is not None):
            raise ValueError("name the model: 'torchvision: NAME', 'timm: NAME', 'checkpoint: PATH' "
                             "or 'factory: module:callable'")
        if self.weights and not self.torchvision:
            raise ValueError("'weights' is for torchvision models; use 'checkpoint' for your own weights")
        self._timm_weights()
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("'std' values must be positive")
        return self

    def _timm_weights(self) -> None:
        """One source of weights for a timm model; `pretrained` resolved (true unless a checkpoint gives them)."""
        if not self.timm:
            if self.pretrained is not None or self.pretrained_file:
                raise ValueError("'pretrained' and 'pretrained_file' are for timm models ('timm: NAME')")
            return
        if (self.checkpoint or self.checkpoints) and (self.pretrained or self.pretrained_file):
            raise ValueError("'checkpoint' gives the weights; remove 'pretrained'/'pretrained_file' "
                             "(or remove 'checkpoint' to load timm's weights)")
        if self.pretrained is False and self.pretrained_file:
            raise ValueError("'pretrained: false' asks for random weights but 'pretrained_file' gives weights; "
                             "remove one of them")
        if self.pretrained is None:
            self.pretrained = not (self.checkpoint or self.checkpoints)


class DatasetSpec(_Section):
    format: Literal["imagefolder", "fashion-mnist", "mnist", "cifar10"]
    root: Path
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(None, ge=1, description="deterministic random subset of this many images")
    on_error: Literal["skip", "raise"] = "skip"
    samples: int = Field(8, ge=1, le=64, description="sample images for predictions and activation maps")
    batch_size: int = Field(64, ge=1, le=4096)
    workers: int = Field(0, ge=0, le=64)
    labels: Literal["auto", "folder"] = Field(
        "auto", description="imagefolder: match class folders to the model's classes (by ImageNet synset ID or "
                            "name), or 'folder' to trust folder order (folder i = output i); see labels.py")
    labels_file: Path | None = Field(
        None, description="imagefolder without class folders (the ILSVRC val): the devkit folder, Kaggle's "
                          "LOC_val_solution.csv, or a 'file,label' CSV")
    concepts: Path | None = Field(
        None, description="a CSV 'image,concepts' naming each listed image's concepts (attributes), ';'-separated; "
                          "the image by its name in the report (test[12], cat/a.png) or its index; unit_labels "
                          "labels units with them beside the classes")

    @model_validator(mode="after")
    def _labels_file(self):
        if self.labels_file is not None and self.format != "imagefolder":
            raise ValueError(f"'labels_file' is for imagefolder datasets; {self.format} has its own labels")
        if self.labels_file is not None and self.labels == "folder":
            raise ValueError("'labels: folder' trusts class folders' order, but 'labels_file' gives the labels; "
                             "remove one of them")
        return self


class MemoryDatasetSpec(DatasetSpec):
    """Python API only: `data` is an in-memory map-style torch Dataset whose item i is (image, label): a PIL image
    or a (C, H, W) tensor/array, float in [0, 1] or uint8; label an int (the model's output index). Its classes
    are `data.classes` where it has them. It has no file: its fingerprint (the cache key) hashes its length, every
    label and the pixels of 32 evenly spaced items (data.py, `memory_fingerprint`)."""
    format: Literal["memory"] = "memory"
    root: Path | None = None
    data: object = Field(exclude=True)

    @field_validator("format", "root", "labels_file", mode="before")
    @classmethod
    def _file_keys(cls, v):
        raise ValueError("is for datasets read from files; 'data' (an in-memory dataset) replaces it: remove it")

    @field_validator("data")
    @classmethod
    def _data(cls, v):
        if not (hasattr(v, "__getitem__") and hasattr(v, "__len__")):
            raise ValueError(f"a {type(v).__name__} is not a dataset; pass a map-style torch Dataset "
                             "(__len__, and __getitem__ returning (image, label))")
        return v


def _dataset_kind(v) -> str:
    """Which dataset section a value is: in memory when it has `data`. The tags hold '-' so that `key_path`
    leaves them out of the dotted key."""
    memory = "data" in v if isinstance(v, dict) else isinstance(v, MemoryDatasetSpec)
    return "dataset-memory" if memory else "dataset-files"


FilterSel = Union[list[int], str, int]


class LayerSpec(_Section):
    name: str = Field(min_length=1)
    filters: FilterSel | None = Field(None, description="default: the first 16 filters (all if fewer)")
    embedding: Literal["tsne", "pca", "both", "none"] | None = None

    @field_validator("filters", mode="before")
    @classmethod
    def _filters_syntax(cls, v):
        # before pydantic's coercion, which would read YAML's `filters: yes` as filter 1
        if isinstance(v, (list, str, int)):
            parse_filter_selection(v)  # raises ValueError with the fix
        return v


class RecordSpec(_Section):
    top_k: int = Field(9, ge=1, le=100)
    negatives: bool = False
    pooled_limit: int = Field(5000, ge=0, le=200_000, description="images whose pooled features are kept")

    # accepted and ignored by 0.1 (the bins were always fixed): refused with the reason, not as "unknown key"
    histogram_bins: object = Field(None, exclude=True, description="removed")

    @field_validator("histogram_bins")
    @classmethod
    def _removed(cls, v):
        if v is not None:
            raise ValueError("removed: it never changed the histograms, whose bins are fixed (16 per decade); "
                             "delete this line")
        return v


class FeatureVisSpec(_Section):
    enabled: bool = True
    size: int = Field(0, ge=0, le=1024, description="image size; 0 = the model's input size")
    # 128 steps with the last quarter settling reach 1.03-2.4x the final activation of 256 warped steps
    # (VGG19 block2_conv2 to block5_conv3, 128 px); coarse to fine lowered it (0.74x). benchmarks/feature_vis.py.
    steps: int = Field(128, ge=1, le=10_000)
    settle: float = Field(0.25, ge=0, le=1, description="share of the last steps that optimize the unwarped "
                                                        "image (the view shown and measured), no random warp")
    precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "what the steps compute the model in; auto = bfloat16 where the device computes it natively (CPUs "
        "with AVX-512 BF16 or AMX, CUDA GPUs that support it), else float32. Final images are measured in "
        "float32"))
    lr: float = Field(0.05, gt=0, description="Adam's step size")
    progressive: bool = Field(False, description="coarse to fine: a third of the steps at half size, a third at "
                                                 "three quarters, for 60% of the work (images of 64 px or more; "
                                                 "not class models)")
    batch_size: int = Field(0, ge=0, le=4096, description="images optimized together, each batch cached on its "
                                                          "own; 0 = 64 on CPU, 256 on GPU")
    objective: Literal["channel", "neuron"] = "channel"
    variants: int = Field(1, ge=1, le=4, description="images per filter; with diversity > 0 they differ")
    diversity: float = Field(0.0, ge=0.0, le=2.0, description="weight of the diversity term between variants")
    param: Literal["fourier", "maco"] = Field("fourier", description=(
        "how each filter's image is parameterized: fourier = a frequency-scaled spectrum through a sigmoid "
        "(Olah et al. 2017); maco = the phase only, the magnitude fixed to the dataset's mean amplitude spectrum "
        "(Fel et al. 2023), with a transparency map. Class models stay fourier"))
    compare: list[Literal["fourier", "maco", "plain"]] = Field(default_factory=list, description=(
        "parameterizations also synthesized for each filter and shown beside `param`'s image, each with its "
        "activation (each one costs as much as the main image); plain = raw pixels, no regularizer"))
    compare_plain: bool = Field(False, description="also run the plain, unregularized ascent (doubles the cost); "
                                                   "the same as 'plain' in compare")
    classes: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], description="class-model images on the overview")

    @model_validator(mode="after")
    def _compared(self):
        if len(set(self.compare)) != len(self.compare):
            raise ValueError(f"compare lists a parameterization twice: {self.compare}")
        if self.compare_plain and "plain" not in self.compare:
            self.compare = [*self.compare, "plain"]
        return self


class CircuitSpec(_Section):
    enabled: bool = True
    top_n: int = Field(10, ge=1, le=512)
    expand: bool = False
    expand_through: Literal["off", "linear", "activations"] = Field("off", description=(
        "expanded weights (Olah et al., 'Visualizing Weights'): each filter's effective kernel on an earlier "
        "layer's channels, every op between multiplied out. linear: exact, through convs, BatchNorms, sums, "
        "concatenations, average pooling and moves, stopping (and saying where) at a non-linearity; "
        "activations: also crosses activations as the identity and max pooling as average pooling (an "
        "approximation, stated on the page); off: none (each filter costs a trace of the model)"))
    expand_from: str | None = Field(None, description=(
        "the earlier layer (module path, Keras-style alias or 'input') the expanded weights read; none: the "
        "nearest layers where the expansion stops on every path"))


class EmbeddingSpec(_Section):
    max_points: int = Field(5000, ge=10, le=200_000, description=(
        "points per explorer, a seeded subset of the pooled images (record.pooled_limit); 60k: about 35 s "
        "of t-SNE on one core and a 2.1 MB page, the exact neighbour search growing with the square"))


class AttributionTrustSpec(_Section):
    enabled: bool = True
    steps: int = Field(16, ge=2, le=256, description="points of each curve beyond the first: a share 1/steps of "
                                                     "the pixels is removed (or inserted) per step")
    random_orders: int = Field(3, ge=1, le=32, description="seeded random pixel orders averaged into the baseline")


class AttributionSpec(_Section):
    enabled: bool = True
    images: int | list[int] = Field(8, description="how many sample images, or a list of dataset indices")

    @field_validator("images")
    @classmethod
    def _images(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"{v} images: give at least 1, or a list of dataset indices")
        if isinstance(v, list) and (not v or any(i < 0 for i in v)):
            raise ValueError("give a non-empty list of dataset indices (0 or more)")
        return v
    methods: list[Literal["occlusion", "saliency", "gradcam", "guided_backprop", "guided_gradcam"]] = Field(
        default_factory=lambda: ["occlusion", "saliency", "gradcam", "guided_backprop", "guided_gradcam"])
    target: Literal["predicted", "true", "both"] = "predicted"
    window: int = Field(0, ge=0, description="occlusion window; 0 = 1/6 of the input size")
    stride: int = Field(0, ge=0, description="occlusion stride; 0 = half the window")
    layer: str | None = None
    sanity_check: bool = True
    trust: AttributionTrustSpec = Field(default_factory=AttributionTrustSpec, description=(
        "deletion and insertion curves of every map against a random pixel order (Petsiuk et al. 2018); "
        "`true`/`false` is short for {enabled: …}"))

    @field_validator("trust", mode="before")
    @classmethod
    def _trust(cls, v):
        if isinstance(v, bool):
            return {"enabled": v}
        if not isinstance(v, dict | AttributionTrustSpec):
            raise ValueError(f"{v!r}: give true, false or a mapping like {{steps: 16, random_orders: 3}}")
        return v


class AccuracySpec(_Section):
    enabled: bool = True
    confusions: int = Field(10, ge=0, le=1000, description="the most confused pairs (true → predicted) listed")


class TrustSpec(_Section):
    enabled: bool = True
    natural: int = Field(9, ge=2, le=100, description="top natural images of each filter its synthesized image is "
                                                       "compared with (at most record.top_k are recorded)")


class ConceptsSpec(_Section):
    enabled: bool = True
    k: int = Field(8, ge=2, le=64, description="concepts per layer (NMF components)")
    images: int = Field(200, ge=10, le=20_000, description="images whose activation maps are factorized (a seeded "
                                                            "subset of those used)")
    patches: int = Field(8, ge=1, le=32, description="top patches shown per concept, one per image")


class UnitLabelsSpec(_Section):
    enabled: bool = True
    alpha: float = Field(0.01, gt=0, lt=1, description="significance level of a label's search-corrected p-value")
    # On thousands of images p <= alpha is reached by AUCs barely above 0.5 (every demo unit was "significant"
    # on 5000 images); a label names what the unit detects only when it also separates well.
    min_auc: float = Field(0.75, ge=0.5, le=1, description="the least AUC a label needs, besides significance")
    permutations: int = Field(1000, ge=9, le=100_000, description="null units searched for the p-value (seeded)")
    max_terms: int = Field(3, ge=1, le=3, description="classes or concepts in one formula (OR, AND, AND NOT)")
    beam: int = Field(5, ge=1, le=50, description="formulas of each length kept for extension by the search")

    @model_validator(mode="after")
    def _reachable(self):
        # the smallest p-value is 1 / (permutations + 1): fewer permutations could never reach alpha
        if (self.permutations + 1) * self.alpha < 1:
            raise ValueError(f"{self.permutations} permutations cannot give a p-value of {self.alpha} or less; "
                             f"use at least {int(-(-1 // self.alpha)) - 1}")
        return self


class DeepDreamSpec(_Section):
    enabled: bool = False   # opt-in: optimizations per image, minutes on a large model's CPU build
    images: int = Field(2, ge=1, le=64, description="sample images dreamed at each spec layer (the first ones)")
    octaves: int = Field(3, ge=1, le=8, description="scales dreamed, smallest first (those under 8 px skipped)")
    octave_scale: float = Field(1.4, gt=1, le=4, description="size ratio between consecutive octaves")
    steps: int = Field(10, ge=1, le=1000, description="ascent steps per octave")
    lr: float = Field(0.05, gt=0, le=1, description="step in pixel units ([0, 1]) after the gradient is divided "
                                                     "by its mean absolute value")
    jitter: int = Field(2, ge=0, le=64, description="px: the largest random roll of the image at each step")
    filters: int = Field(0, ge=0, le=4096, description=(
        "the first N spec filters of each layer also get the first sample image nudged towards them (the "
        "channel's mean), shown on the filter pages; 0 = none"))


class AdversarialSpec(_Section):
    enabled: bool = False   # opt-in: optimizations per image, minutes on a large model's CPU build
    images: int = Field(4, ge=1, le=64, description="sample images attacked (the first ones)")
    target: str = Field("next", min_length=1, description=(
        "the targeted attack's class: next (each image's second most likely class), least_likely, or a class "
        "name of the model"))
    steps: int = Field(20, ge=1, le=1000, description="PGD steps per attack (step 2.5 × budget / steps)")
    max_budget: float = Field(0.1, gt=0, le=1, description="the largest L∞ budget tried, in pixel units [0, 1]")
    tolerance: float = Field(1 / 255, gt=0, le=0.5, description="the bisection stops when the smallest flipping "
                                                                "budget is known to within this")


class InversionSpec(_Section):
    enabled: bool = False   # opt-in: optimizations per image, minutes on a large model's CPU build
    images: int = Field(2, ge=1, le=64, description="sample images reconstructed at each spec layer (the first ones)")
    # On the demo 256 steps at 0.02 bring the relative distance from about 1 to 0.03-0.17 at block1_conv2 and
    # 0.3-0.4 at block3_conv1, 1.5 s a layer for 2 images; lr 0.05 or 0.1 stalls higher (Adam on the spectrum).
    steps: int = Field(256, ge=1, le=10_000, description="optimization steps, the last quarter unwarped")
    lr: float = Field(0.02, gt=0, le=1, description="Adam's step size on the image's spectrum")


class TextureSpec(_Section):
    enabled: bool = False
    image: int = Field(0, ge=0, le=63, description="the sample image whose texture is synthesized (its position "
                                                   "among the sample images)")
    style_image: int = Field(0, ge=0, le=63, description="the sample image that gives the style transfer its style")
    content_image: int = Field(1, ge=0, le=63, description="the sample image that gives the style transfer its "
                                                           "content")
    content_layer: str | None = Field(None, description="the spec layer (its name in `layers`) whose activations "
                                                        "the style transfer matches; none: the deepest")
    steps: int = Field(256, ge=1, le=10_000, description="optimization steps of each image, the last quarter unwarped")
    lr: float = Field(0.02, gt=0, le=1, description="Adam's step size on the image's spectrum")
    style_weight: float = Field(1.0, gt=0, le=1e4, description="style transfer: the weight of the Gram matrices' "
                                                              "relative distance (all layers together) against "
                                                              "the content's")


class Spec(_Section):
    title: str = "reportgen report"
    seed: int = 0
    output: Path = Path("site")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    model: ModelSpec
    dataset: Annotated[Union[Annotated[DatasetSpec, Tag("dataset-files")],
                             Annotated[MemoryDatasetSpec, Tag("dataset-memory")]], Discriminator(_dataset_kind)]
    layers: list[LayerSpec] = Field(min_length=1)
    record: RecordSpec = Field(default_factory=RecordSpec)
    feature_vis: FeatureVisSpec = Field(default_factory=FeatureVisSpec)
    circuit: CircuitSpec = Field(default_factory=CircuitSpec)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    attribution: AttributionSpec = Field(default_factory=AttributionSpec)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    trust: TrustSpec = Field(default_factory=TrustSpec)
    concepts: ConceptsSpec = Field(default_factory=ConceptsSpec)
    unit_labels: UnitLabelsSpec = Field(default_factory=UnitLabelsSpec)
    deepdream: DeepDreamSpec = Field(default_factory=DeepDreamSpec)
    adversarial: AdversarialSpec = Field(default_factory=AdversarialSpec)
    inversion: InversionSpec = Field(default_factory=InversionSpec)
    texture: TextureSpec = Field(default_factory=TextureSpec)
    # set by the loader, not by users
    spec_path: Path | None = Field(None, exclude=True)   # the spec's directory
    spec_file: Path | None = Field(None, exclude=True)


def parse_filter_selection(value: FilterSel) -> list[int] | None:
    """`[1, 5]`, `7`, `"0-63"`, `"0-7,31"` → sorted unique ints; `"all"` → None (every filter)."""
    if isinstance(value, bool):
        raise ValueError("give filter indices: a list like [0, 31], a range like '0-63', or 'all'")
    if isinstance(value, int):
        value = [value]
    if isinstance(value, list):
        if not value or any(not isinstance(v, int) or v < 0 for v in value):
            raise ValueError("filter indices must be a non-empty list of non-negative integers")
        return sorted(set(value))
    if value.strip() == "all":
        return None
    out = set()
    for part in value.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{value!r} is not a filter selection; use a list like [0, 31], "
                             f"a range like '0-63', or 'all'")
        lo_i, hi_i = int(lo), int(hi) if sep else int(lo)
        if hi_i < lo_i:
            raise ValueError(f"range {part.strip()!r} runs backwards; write '{hi_i}-{lo_i}'")
        out.update(range(lo_i, hi_i + 1))
    return sorted(out)


def key_path(loc: tuple) -> str:
    """Pydantic's error location → the spec's dotted key (`('layers', 1, 'name')` → `layers[1].name`)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"[A-Za-z_]\w*", str(part)) or str(part) in ("int", "str", "bool", "float"):
            continue  # pydantic's union/validator branch labels (`list[int]`, `lax-or-strict[…]`) are not spec keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key; check its spelling against the README's spec reference"
    if err["type"] == "missing":
        return "required key is missing"
    return msg


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file. Raises SpecError (first error; all listed in `.errors`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError("(spec)", f"no spec file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError("(spec)", f"cannot read {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise SpecError("(spec)", f"{path.name} is not valid YAML{line}: "
                                  f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise SpecError("(spec)", f"{path.name} must be a YAML mapping of keys like 'model:', 'dataset:', 'layers:'")
    spec = validate_spec(raw, path.resolve().parent)
    spec.spec_file = path.resolve()
    return spec


def validate_spec(raw: dict, base: Path) -> Spec:
    """A spec mapping (a YAML file's, or the Python API's dict) → the Spec, relative paths resolved against `base`
    (the spec file's directory). Raises SpecError (first error; all listed in `.errors`)."""
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        errors = [SpecError(key_path(e["loc"]), _message(e)) for e in exc.errors()]
        first = errors[0]
        first.errors = errors
        raise first from None
    if spec.dataset.concepts and not (spec.unit_labels.enabled or spec.concepts.enabled):
        # only those two read it: a file named and never read would be a key accepted and ignored
        raise SpecError("dataset.concepts", "is read only by unit_labels and concepts, both turned off; "
                                            "enable one of them or remove the key")
    _check_texture(spec)
    return _resolve_paths(spec, base)


def _check_texture(spec: Spec) -> None:
    """`texture`'s references to other sections: a spec layer's name, and sample images that exist."""
    t, names = spec.texture, [l.name for l in spec.layers]
    if not t.enabled:
        return
    if t.content_layer is not None and t.content_layer not in names:
        raise SpecError("texture.content_layer", f"{t.content_layer!r} is not one of the spec's layers "
                                                 f"({', '.join(names)})")
    for key in ("image", "style_image", "content_image"):
        if getattr(t, key) >= spec.dataset.samples:
            raise SpecError(f"texture.{key}", f"sample image {getattr(t, key)} does not exist: dataset.samples "
                                              f"is {spec.dataset.samples} (0 to {spec.dataset.samples - 1})")


def _resolve_paths(spec: Spec, base: Path) -> Spec:
    """Relative paths in a spec are relative to the spec file's directory."""
    def rel(p: Path) -> Path:
        p = p.expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else base / p))
    spec.spec_path = base
    spec.output = rel(spec.output)
    if spec.dataset.root is not None:   # None: an in-memory dataset (MemoryDatasetSpec)
        spec.dataset.root = rel(spec.dataset.root)
    if spec.dataset.labels_file:
        spec.dataset.labels_file = rel(spec.dataset.labels_file)
    if spec.dataset.concepts:
        spec.dataset.concepts = rel(spec.dataset.concepts)
    if spec.model.checkpoint:
        spec.model.checkpoint = rel(spec.model.checkpoint)
    if spec.model.checkpoints is not None:   # the last one is the model's checkpoint (checked here: paths known)
        spec.model.checkpoints = _checkpoint_entries(spec.model.checkpoints, rel)
        spec.model.checkpoint = spec.model.checkpoints[-1].path
    if spec.model.pretrained_file:
        spec.model.pretrained_file = rel(spec.model.pretrained_file)
    if isinstance(spec.model.classes, Path):
        spec.model.classes = rel(spec.model.classes)
    return spec


def natural_key(text: str) -> list:
    """"epoch2" before "epoch10": digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", text)]


def _checkpoint_entries(value, rel) -> list[CheckpointEntry]:
    """`model.checkpoints` as entries with resolved paths: a glob expanded (natural sort, names from the stems),
    every file present, at least 2."""
    if isinstance(value, str):
        found = sorted((Path(p) for p in glob.glob(str(rel(Path(value)))) if Path(p).is_file()),
                       key=lambda p: natural_key(str(p)))
        if len(found) < 2:
            raise SpecError("model.checkpoints", f"the glob {value!r} matches {len(found)} file"
                                                 f"{'s' if len(found) != 1 else ''}; it must match at least 2")
        stems = [p.stem for p in found]
        names = stems if len(set(stems)) == len(stems) else [p.name for p in found]
        return [CheckpointEntry(name=n, path=p) for n, p in zip(names, found)]
    entries = [CheckpointEntry(name=e.name, path=rel(e.path)) for e in value]
    for i, e in enumerate(entries):
        if not e.path.is_file():
            raise SpecError(f"model.checkpoints[{i}]", f"no file {str(value[i].path)!r}")
    return entries
