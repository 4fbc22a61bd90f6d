"""Which model output each dataset image's true class is: an ImageFolder's classes matched to the model's.

An ImageFolder's scan labels images by its class keys (folder names, or the labels a `dataset.labels_file`
gives), sorted. That order is the model's output order only by luck: 40 of ImageNet's 1000 synset folders are
labelled 0..39. `match_labels` (spec key `dataset.labels`, default `auto`) maps each key to the model's output:

  auto   keys are WNIDs and the model's classes ImageNet-1k's (`class_ids`)  → by WNID (any subset, any order);
         keys are WNIDs of ImageNet-1k, the model has 1000 unnamed outputs   → taken for ImageNet-1k, by WNID;
         keys are integers, from a labels_file                             → the output index itself;
         keys are among the model's class names                            → by name;
         the model's outputs are unnamed (`class i`)                        → folder order (as ImageFolder);
         anything else is a SpecError on `dataset.labels` saying how to fix it.
  folder folder order, trusted (folder i is output i), as before this module existed.

After a match the dataset's labels are model output indices and its classes are the model's (names and
`class_ids`), so accuracy, true classes and per-class means are in the model's terms. Fashion-MNIST, MNIST and
CIFAR-10 have their canonical label order and are not matched. Folder order with WNID folders names each class
by its WordNet lemma, keeping the WNID as its id.
"""

import csv
import hashlib
from pathlib import Path

import numpy as np

from . import imagenet
from .errors import SpecError


def read_labels_file(path: Path) -> dict[str, str]:
    """{image (relative path, file name or stem): class key} from `dataset.labels_file`: the ILSVRC2012 devkit
    folder, Kaggle's LOC_val_solution.csv, or a CSV of `file,label` rows (label: a WNID, a model class name or an
    output index; a first row that is a header is skipped)."""
    key = "dataset.labels_file"
    if not path.exists():
        raise SpecError(key, f"no file or folder {str(path)!r}")
    try:
        table = imagenet.val_labels(path, key)
        if table or path.is_dir():
            return table
        with path.open(newline="", encoding="utf-8") as f:
            rows = [[c.strip() for c in r] for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpecError(key, f"cannot read {str(path)!r}: {exc}") from None
    bad = next((i for i, r in enumerate(rows) if len(r) != 2 or not all(r)), None)
    if bad is not None:
        raise SpecError(key, f"{path.name} line {bad + 1} is {','.join(rows[bad])!r}, not 'file,label'")
    if rows and rows[0][0].lower() in ("file", "filename", "image", "path", "imageid"):
        rows = rows[1:]
    return dict(rows)


def label_for(table: dict[str, str], name: str) -> str | None:
    """The key `table` gives an image named `name` (relative POSIX path): by path, file name, or stem."""
    for k in (name, name.rsplit("/", 1)[-1], Path(name).stem):
        if k in table:
            return table[k]
    return None


def match_labels(dataset, model, spec, named: bool) -> None:
    """Make `dataset.labels` model output indices (see the module docstring); updates `dataset` (labels,
    classes, class_ids, fingerprint) and, for unnamed outputs, `model` (classes, class_ids), in place.
    `spec` is the DatasetSpec; `named` says the spec named the model's classes (`model.classes`)."""
    keys, n = dataset.classes, len(model.classes)
    unnamed = not named and model.classes == [f"class {i}" for i in range(n)]
    if dataset.format != "imagefolder" or spec.labels == "folder":
        if unnamed and n == len(keys):
            model.classes = list(keys)   # an unnamed head over the dataset's classes: use their names
        return
    from_file = spec.labels_file is not None
    wnid_keys = all(imagenet.is_wnid(k) for k in keys)
    if wnid_keys and unnamed and n == imagenet.NUM_CLASSES and all(imagenet.wnid_index(k) is not None for k in keys):
        # a 1000-way head with no names over ImageNet synset folders (a checkpoint's VGG19): ImageNet-1k's
        model.classes, model.class_ids = list(imagenet.names()), list(imagenet.wnids())
    if from_file and all(k.isdigit() for k in keys):
        index = {k: int(k) for k in keys if int(k) < n}
    elif wnid_keys and model.class_ids:
        index = {w: i for i, w in enumerate(model.class_ids)}
    elif unnamed and not from_file and not all(k in model.classes for k in keys):
        _folder_order(dataset, model, wnid_keys)
        return
    else:   # by name; the error below lists the keys no name matches
        index = {c: i for i, c in enumerate(model.classes)}
    missing = [k for k in keys if k not in index]
    if missing:
        raise SpecError("dataset.labels", _mismatch(missing, model, from_file, wnid_keys, spec.root))
    remap = np.array([index[k] for k in keys], np.int64)
    dataset.labels = remap[dataset.labels]
    dataset.classes, dataset.class_ids = list(model.classes), model.class_ids
    # the per-class evidence is cached under the fingerprint: it must change with the labels and class count
    h = hashlib.sha256(f"{dataset.fingerprint}:{len(dataset.classes)}:".encode())
    h.update(dataset.labels.tobytes())
    dataset.fingerprint = h.hexdigest()


def _folder_order(dataset, model, wnid_keys: bool) -> None:
    """Folder i is output i (ImageFolder's order); WNID folders are named by their lemma."""
    if wnid_keys:
        dataset.class_ids = list(dataset.classes)
        dataset.classes = [imagenet.lemma(w) for w in dataset.classes]
    if len(model.classes) == len(dataset.classes):
        model.classes, model.class_ids = list(dataset.classes), dataset.class_ids


def _mismatch(missing: list[str], model, from_file: bool, wnid_keys: bool, root: Path) -> str:
    what = "labels in dataset.labels_file" if from_file else "class folders"
    few = ", ".join(repr(k) for k in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if wnid_keys and model.class_ids:
        found = f"{what} {few} are synset IDs the model's {len(model.class_ids)} ImageNet classes do not include"
    elif wnid_keys:
        found = f"{what} {few} are synset IDs, but the model's classes are not ImageNet-1k's"
    else:
        shown = ", ".join(repr(c) for c in model.classes[:3]) + (", …" if len(model.classes) > 3 else "")
        found = f"{what} {few} match none of the model's {len(model.classes)} classes ({shown})"
    splits = [k for k in missing if k in ("train", "val", "test") and (root / k).is_dir()]
    if splits:
        return f"{found}; {str(root)!r} holds splits: point dataset.root at one of them, e.g. {str(root / splits[-1])!r}"
    fix = "name the model's outputs with model.classes" if from_file else \
        "set dataset.labels: folder to trust folder order (folder i = output i), or name the outputs with model.classes"
    return f"{found}; {fix}"
