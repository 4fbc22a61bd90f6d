"""Content-addressed cache of analysis results: atomic writes, verified reads.

An entry is a dict of numpy arrays (plus JSON-able metadata under the key `meta`), stored as
`<cache>/<kind>/<key>.npz` with its sha256 in `<key>.sha256`. The key hashes everything the
result depends on (model weights, dataset fingerprint, layer, parameters, the analysis'
code version), so a changed input never reads a stale entry. A corrupt entry (hash
mismatch, unreadable) is deleted and recomputed with a warning, never used.
"""

import hashlib
import io
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np


def cache_key(*parts) -> str:
    """A stable hash of JSON-able parts (dicts are key-sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers see the old or the new file, never half.

    The file gets the mode any program's new file gets (0666 less the umask); mkstemp's 0600 would make a
    published site answer 403.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _serialize(arrays: dict) -> bytes:
    arrays = dict(arrays)
    if "meta" in arrays:
        arrays["meta"] = np.array(json.dumps(arrays["meta"], sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _deserialize(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    return out


class Cache:
    def __init__(self, root: Path, enabled: bool = True, writable: bool = True):
        # writable=False: read entries but never write (the non-zero ranks of a distributed build)
        self.root, self.enabled, self.writable = Path(root), enabled, writable

    def _paths(self, kind: str, key: str) -> tuple[Path, Path]:
        base = self.root / kind / key
        return base.with_suffix(".npz"), base.with_suffix(".sha256")

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry is stored, without reading it (a corrupt one shows when `load` reads it)."""
        return self.enabled and self._paths(kind, key)[0].is_file()

    def load(self, kind: str, key: str) -> dict | None:
        """The entry's arrays (and `meta` dict), or None if absent, disabled or corrupt."""
        if not self.enabled:
            return None
        data_path, sum_path = self._paths(kind, key)
        if not data_path.is_file():
            return None
        try:
            data = data_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != sum_path.read_text().strip():
                raise ValueError("sha256 mismatch")
            return _deserialize(data)
        except (OSError, ValueError, KeyError) as exc:
            warnings.warn(f"cache entry {kind}/{key} is corrupt ({exc}); recomputing", stacklevel=2)
            data_path.unlink(missing_ok=True)
            sum_path.unlink(missing_ok=True)
            return None

    def save(self, kind: str, key: str, arrays: dict) -> dict:
        """Store the entry (when enabled and writable); return it as `load` would give it back, so a result
        is used in the same form whether it was just computed or read from the cache (e.g. `meta`'s key order)."""
        data = _serialize(arrays)
        if self.enabled and self.writable:
            data_path, sum_path = self._paths(kind, key)
            # data first, checksum last: a kill in between leaves a mismatch, read as corrupt, recomputed
            atomic_write_bytes(data_path, data)
            atomic_write_bytes(sum_path, hashlib.sha256(data).hexdigest().encode())
        return _deserialize(data)

    def get_or_compute(self, kind: str, key: str, compute) -> dict:
        hit = self.load(kind, key)
        return hit if hit is not None else self.save(kind, key, compute())

    def clear(self) -> bool:
        if self.root.is_dir():
            shutil.rmtree(self.root)
            return True
        return False
