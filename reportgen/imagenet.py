"""ImageNet-1k's class identity: WordNet IDs (WNIDs) in the models' output order, names, and ImageNet's label files.

Sources, all maintained elsewhere (no list of our own): the WNIDs in index order and their WordNet lemmas come
from timm's shipped data (`timm.data.ImageNetInfo`); the short human-readable names from torchvision's weights
meta (`meta["categories"]`, the same list for every ImageNet-1k weights enum). Both are in the standard order
(sorted WNIDs), so output i of an ImageNet-1k model is `wnids()[i]`, named `names()[i]`.

`imagenet_class_ids(classes, num_outputs)` is how a model loader says "this head is ImageNet-1k's": it returns
the WNIDs in output order (→ `LoadedModel.class_ids`) or None. The label files of the official ILSVRC2012 val
folder (Kaggle's `LOC_val_solution.csv`, the devkit's ground truth + `meta.mat`) are read by `val_labels`.
"""

import csv
import re
from functools import cache
from pathlib import Path

from .errors import SpecError

NUM_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")


def is_wnid(name: str) -> bool:
    """A WordNet noun synset ID as ImageNet names its classes: 'n' and 8 digits (`n01632777`)."""
    return _WNID.fullmatch(name) is not None


_SYNSETS, _LEMMAS = "imagenet_synsets.txt", "imagenet_synset_to_lemma.txt"   # timm.data.imagenet_info's names


def _timm_data(name: str) -> str:
    """One of the files `timm.data.ImageNetInfo` reads, read without importing timm (seconds: it imports every
    model) for a torchvision model's build; ImageNetInfo itself where timm keeps them elsewhere."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    path = Path(spec.submodule_search_locations[0], "data", "_info", name) if spec else None
    if path is not None and path.is_file():
        return path.read_text(encoding="utf-8")
    from timm.data import ImageNetInfo  # the layout changed: let timm find its data
    info = ImageNetInfo("imagenet-1k")
    if name == _SYNSETS:
        return "\n".join(info.label_names())
    return "\n".join(f"{w}\t{info.label_name_to_description(w)}" for w in info.label_names())


@cache
def wnids() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WNIDs in the models' output order."""
    return tuple(_timm_data(_SYNSETS).split())


@cache
def _lemmas() -> dict[str, str]:
    """WNID → its WordNet lemmas ('axolotl, mud puppy, Ambystoma mexicanum'), as ImageNetInfo's descriptions."""
    return dict(line.split("\t", 1) for line in _timm_data(_LEMMAS).splitlines() if "\t" in line)


@cache
def names() -> tuple[str, ...]:
    """ImageNet-1k's 1000 short class names ('axolotl') in output order: torchvision's weights categories."""
    import torchvision
    return tuple(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@cache
def _index() -> dict[str, int]:
    return {w: i for i, w in enumerate(wnids())}


def wnid_index(wnid: str) -> int | None:
    """The ImageNet-1k output index of `wnid`, or None if it is not one of the 1000 classes."""
    return _index().get(wnid)


def lemma(wnid: str) -> str:
    """A WNID's first WordNet lemma ('n01632777' → 'axolotl'), for any ImageNet-21k synset; the WNID if unknown."""
    return _lemmas().get(wnid, wnid).split(",")[0].strip()


def imagenet_class_ids(classes: list[str], num_outputs: int) -> list[str] | None:
    """The WNIDs in output order when a model's `num_outputs` outputs are ImageNet-1k's classes, else None.

    `classes` are the names its weights give the outputs; ImageNet-1k's are recognized in any of the spellings
    the libraries ship: torchvision's categories, timm's WNIDs, or timm's lemma descriptions (whole or first
    lemma). Unnamed outputs (`class i`) are not claimed: a 1000-way head need not be ImageNet's.
    """
    if num_outputs != NUM_CLASSES or len(classes) != NUM_CLASSES:
        return None
    classes = list(classes)
    descriptions = [_lemmas()[w] for w in wnids()]
    known = (list(names()), list(wnids()), descriptions, [d.split(",")[0].strip() for d in descriptions])
    return list(wnids()) if any(classes == k for k in known) else None


# --- the official ILSVRC2012 val folder: one flat folder of ILSVRC2012_val_%08d.JPEG, labels in a side file ----

def val_labels(path: Path, key: str) -> dict[str, str]:
    """{image file stem: WNID} from Kaggle's `LOC_val_solution.csv` (ImageId,PredictionString whose first word
    is the WNID) or the ILSVRC2012 devkit folder (`data/ILSVRC2012_validation_ground_truth.txt` + `data/meta.mat`).
    Returns {} when `path` is neither (a plain `file,label` CSV). `key` names the spec key in errors."""
    if path.is_dir():
        return _devkit_labels(path, key)
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
        if [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            return {}
        return {row[0].strip(): row[1].split()[0] for row in csv.reader(f) if len(row) >= 2 and row[1].strip()}


def _devkit_labels(devkit: Path, key: str) -> dict[str, str]:
    """The devkit's val labels. Line i of the ground truth is the ILSVRC2012_ID of image i+1; an ILSVRC2012_ID is
    the devkit's own class number (1..1000 in meta.mat's order, which is NOT the sorted-WNID output order), turned
    into a WNID through meta.mat. Read as torchvision's ImageNet does (`parse_devkit_archive`, whose parser is not
    importable on its own)."""
    import scipy.io

    data = devkit / "data" if (devkit / "data").is_dir() else devkit
    truth, meta = data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"
    for f in (truth, meta):
        if not f.is_file():
            raise SpecError(key, f"{str(devkit)!r} is a folder but has no {f.name} (give the ILSVRC2012_devkit_t12 "
                                 "folder, LOC_val_solution.csv or a 'file,label' CSV)")
    try:
        synsets = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
        id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        ids = [int(line) for line in truth.read_text(encoding="utf-8").split()]
    except (ValueError, KeyError, OSError, TypeError, IndexError) as exc:
        raise SpecError(key, f"cannot read the devkit in {str(devkit)!r}: {exc.__class__.__name__}: {exc}") from None
    unknown = sorted({i for i in ids if i not in id_to_wnid})
    if unknown:
        raise SpecError(key, f"{truth.name} names ILSVRC2012_ID {unknown[0]} which meta.mat does not list")
    return {f"ILSVRC2012_val_{n:08d}": id_to_wnid[i] for n, i in enumerate(ids, start=1)}
