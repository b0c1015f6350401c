"""Datasets that scale with the data, not with RAM: the deterministic pre-processing cached on disk once.

:func:`training_dataset` builds the dataset of a training run. Its deterministic head (load, orient, resample,
window, crop to foreground; everything before the first random transform) runs once per volume and is stored as
one ``.pt`` file per item by :class:`DiskCacheDataset` (MONAI's ``PersistentDataset``); every later epoch, resumed
run or rank loads that file and applies only the random crops and augmentations, in the data loader's worker
processes. The file is read memory-mapped (``torch.load(mmap=True)``): a random crop is a view of the mapping, so
an item drawn as two 96^3 crops of a 75 MB volume reads the pages those crops touch rather than the whole file,
and ranks on one host share the pages (``bench/data.py`` measures it against a whole read; the mapping is
private, so no transform can write to the file). A mapped file cut short while in use (copied over in place,
replaced by another host on a network file system) ends the process with SIGBUS, which no error handling catches:
``MEDGMAE_CACHE_MMAP=0`` in the environment reads the files whole, as before. The cache lives in a sub-folder of
``cache_root`` named by a hash of the pre-processing record (the :class:`~medgmae.preprocessing.PreprocessingSpec`
and a description of the deterministic transforms), so changing the spacing or the HU window starts a new cache
instead of reusing stale arrays (as does a release that changes the files' layout: a folder of an earlier
release's cache is left unused, to be removed by hand). Each item's file name hashes its paths with the size and
modification time of its files, so an edited volume is pre-processed again. Each file holds
that key beside the pre-processed item and is used only when the key is its item's: a file copied over it (another
item's entry, a model) is pre-processed again, as an unreadable one is, with a warning naming it.

Keeping pre-processed volumes in RAM is an option (``cache_rate`` > 0: MONAI's ``CacheDataset``, filled before the
first step, as fast as it gets for small data and impossible for large data).

Several processes may build one cache at once (ranks of a DDP job, several jobs): each file is written under a
temporary name in the cache folder itself and renamed (``os.replace``, atomic on POSIX), so a reader sees a whole
file or none. MONAI's ``PersistentDataset`` (1.x) writes into a ``tempfile.TemporaryDirectory()`` (the system
temporary folder) and ``shutil.move``s the file into the cache; when that folder is on another filesystem (a
node-local ``/tmp`` and a shared cache) the move is a copy, which another rank can read half-written. Hence the
override of ``_cachecheck``. A process killed while writing leaves its temporary file; every run removes those of
writers that no longer run on its host, and those unchanged for a day whoever wrote them (a container's writer:
:func:`medgmae.temp_names.remove_dead_writers_files`), never one a live process may still be writing.

Each missing item is pre-processed once, whatever the number of processes that want it at once (jobs started
together with one ``cache_dir``, ranks, loader workers): the first claims it with a ``.<file name>.claim`` file
created exclusively beside its cache file, and the others wait for that file and load it
(:mod:`medgmae.data.cache_claims`: what a waiter says, and when it builds the item itself: the claim removed
without a file, its process gone from this host, or the claim 30 minutes old). A claim is removed when its build
ends, fails, or is stopped by Ctrl-C or SIGTERM; one a killed process left is taken over by the next process that
wants its item, and removed at a run's start as a killed writer's temporary file is. Without contention the only
change is the claim's creation and removal around each build.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import types
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait

from medgmae.data.cache_claims import claimed
from medgmae.data.fingerprint import file_fingerprint
from medgmae.files import atomic_write, output_dir_problem, save_json_atomic
from medgmae.temp_names import CLAIM_NAME, REMOVED_BECAUSE, remove_dead_writers_files
from medgmae.write_failures import refused_write
from medgmae.words import plural

__all__ = [
    "DiskCacheDataset", "describe_transforms", "cache_folder", "preprocessing_record", "training_dataset", "item_hash",
]  # fmt: skip

logger = logging.getLogger("medgmae.data")

_SKIP_ATTRS = {"R", "backend"}


def _describe(obj: Any, depth: int = 0) -> Any:
    """A JSON-able, address-free description of a transform and its settings."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth + 1) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (np.ndarray, torch.Tensor, np.generic)):
        arr = np.asarray(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj)
        return arr.tolist() if arr.size <= 64 else f"array{arr.shape}"
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    if isinstance(obj, (torch.dtype, np.dtype, Path)):
        return str(obj)
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if depth > 4 or not hasattr(obj, "__dict__"):
        return name
    attrs = {k: v for k, v in vars(obj).items() if not k.startswith("_") and k not in _SKIP_ATTRS}
    return {"type": name, **{k: _describe(v, depth + 1) for k, v in sorted(attrs.items())}}


def describe_transforms(transform: Callable) -> list:
    """Descriptions of the deterministic head of ``transform`` (up to the first random transform)."""
    chain = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
    head = []
    for t in chain:
        if isinstance(t, RandomizableTrait):
            break
        head.append(_describe(t))
    return head


def cache_folder(cache_root: str | Path, transform: Callable, spec: Mapping | None = None, create: bool = True) -> Path:
    """``cache_root/<hash>``: the folder of the cache of this pre-processing, with a ``preprocessing.json``
    describing it.

    Args:
        cache_root: parent folder of caches.
        transform: the dataset's transform chain (its deterministic head is hashed).
        spec: the pre-processing record (``PreprocessingSpec.to_dict()`` or any JSON-able mapping).
        create: create the folder and its ``preprocessing.json`` now (``False``: only name it;
            :class:`DiskCacheDataset` creates it when it builds its first item).

    Returns:
        The folder.
    """
    return _named_folder(cache_root, preprocessing_record(transform, spec), create)


def _named_folder(cache_root: str | Path, record: Mapping, create: bool) -> Path:
    """``cache_root/<hash of record>`` (created with ``record`` as its ``preprocessing.json`` when ``create``)."""
    text = json.dumps(record, sort_keys=True, default=str)
    folder = Path(cache_root) / hashlib.sha256(text.encode()).hexdigest()[:16]
    if create:
        _write_record(folder, record)
    return folder


#: The layout of a cache file, in the record its folder's name hashes: files holding their item's key (2) live in
#: other folders than the earlier release's bare items (1, no entry), which that release would read as items.
ENTRY_FORMAT = 2


def preprocessing_record(transform: Callable, spec: Mapping | None = None) -> dict:
    """What a cache folder's name hashes and its ``preprocessing.json`` holds: the spec, the deterministic head of
    ``transform`` (:func:`describe_transforms`) and the layout of its files (:data:`ENTRY_FORMAT`)."""
    return {"spec": dict(spec) if spec else None, "transforms": describe_transforms(transform),
            "entry_format": ENTRY_FORMAT}  # fmt: skip


def _write_record(folder: Path, record: Mapping | None) -> None:
    """Create ``folder`` with ``preprocessing.json`` holding ``record`` (``None``: the folder alone), once."""
    if record is None:
        folder.mkdir(parents=True, exist_ok=True)
    elif not (folder / "preprocessing.json").is_file():
        save_json_atomic(record, folder / "preprocessing.json")


def item_hash(item: Mapping) -> bytes:
    """Cache key of a datalist item: its entries plus the size and modification time of each file it names
    (:func:`~medgmae.data.fingerprint.file_fingerprint`: a DICOM folder by its files)."""
    prints = {key: file_fingerprint(value) for key, value in item.items() if isinstance(value, (str, os.PathLike))}
    stats = {key: list(fp) for key, fp in prints.items() if fp is not None}
    text = json.dumps({"item": {k: str(v) for k, v in item.items()}, "stats": stats}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest().encode()


class DiskCacheDataset(PersistentDataset):
    """MONAI ``PersistentDataset`` whose cache files are written atomically inside the cache folder (see the module
    docstring) and read back when unreadable ones are recomputed.

    Nothing is written before the first item is loaded: the folder (and its ``preprocessing.json``) is created
    when the first item is built (before its claim and cache file), so that a run refused before training (a resume
    that does not fit, unusable data) leaves no trace.

    Args:
        data: datalist items.
        transform: the full chain; its deterministic head is cached.
        cache_dir: folder of the cache files (use :func:`cache_folder`).
        track_meta: keep MetaTensors (with their affine) in the cache (needed by inversion and by writers of
            results in the input's space).
        record: what the folder's ``preprocessing.json`` holds (:func:`preprocessing_record`), written with
            the folder (``None``: no such file).
        mmap: read cache files memory-mapped (see the module docstring); ``False`` reads each whole.
    """

    def __init__(
        self, data: Sequence, transform: Callable, cache_dir: str | Path, track_meta: bool = False,
        record: Mapping | None = None, mmap: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(data, transform, cache_dir=None, hash_func=item_hash, track_meta=track_meta,
                         weights_only=not track_meta)  # fmt: skip
        self.cache_dir, self.record, self.mmap = Path(cache_dir), record, bool(mmap)
        self.transform_hash = ""  # the folder already names the pre-processing

    def _load(self, hashfile: Path) -> Any:
        """One cache file, memory-mapped where the file system allows it (else read whole from then on, said once)."""
        if self.mmap:
            try:
                return torch.load(hashfile, weights_only=self.weights_only, mmap=True)
            except Exception as e:
                obj = torch.load(hashfile, weights_only=self.weights_only)  # unreadable either way: the caller says so
                self.mmap = False
                logger.info("cache files cannot be memory-mapped in %s (%s): they are read whole", self.cache_dir,
                            type(e).__name__)  # fmt: skip
                return obj
        return torch.load(hashfile, weights_only=self.weights_only)

    def _cachecheck(self, item_transformed: Any) -> Any:
        """The pre-processed item: its cache file's, else built under a claim (another process building it is
        waited for: :mod:`medgmae.data.cache_claims`) and written."""
        key = self.hash_func(item_transformed).decode()
        hashfile = Path(self.cache_dir) / f"{key}.pt"
        unusable = None
        if hashfile.is_file():
            if (found := self._cached(hashfile, key)) is not _REBUILD:
                return found
            unusable = _status(hashfile)
        try:
            _write_record(self.cache_dir, self.record)  # the claim's folder (a refusal is said by the write below)
        except OSError:
            pass
        with claimed(hashfile, unusable) as build:
            if not build and (found := self._cached(hashfile, key)) is not _REBUILD:
                return found
            from copy import deepcopy

            out = self._pre_transform(deepcopy(item_transformed))
            self._write(hashfile, key, out)
            return out

    def _cached(self, hashfile: Path, key: str) -> Any:
        """The pre-processed item ``hashfile`` holds when it is the entry of the item whose key is ``key``, else
        :data:`_REBUILD` (said in a warning naming the file: it is then written again)."""
        try:
            entry = self._load(hashfile)
        except Exception as e:  # corrupt (e.g. a disk filled up): recompute and replace it
            logger.warning("unreadable cache file %s (%s): pre-processing the item again", hashfile,
                           _unreadable_reason(hashfile, e))  # fmt: skip
            return _REBUILD
        # an entry holds the key of its item, so that a file copied over it (another item's entry, a model.pt)
        # is not used as this item's volume; files written before keys were stored hold the item alone: they are
        # taken for another item's and written again, once
        if isinstance(entry, Mapping) and set(entry) == {_KEY, _ITEM} and entry[_KEY] == key:
            return entry[_ITEM]
        if isinstance(entry, Mapping) and isinstance(entry.get(_KEY), str):
            logger.warning("cache file %s is not this item's cache entry (it holds another item's volume): rebuilt",
                           hashfile)  # fmt: skip
        elif str(self.cache_dir) not in _KEYLESS_NOTED:  # an upgrade's whole cache: said once per folder and process
            _KEYLESS_NOTED.add(str(self.cache_dir))
            logger.warning("cache files in %s hold no cache key (written by an earlier release, or another file "
                           "copied in, e.g. %s): each is pre-processed again and rewritten as it is read",
                           self.cache_dir, hashfile.name)  # fmt: skip
        return _REBUILD

    def _write(self, hashfile: Path, key: str, out: Any) -> None:
        """Store the pre-processed item ``out`` with its ``key`` in ``hashfile``; a folder that cannot be written
        (another user's, a read-only one) is named with ``--cache_dir``."""
        from monai.utils import convert_to_tensor

        entry = {_KEY: key, _ITEM: _compact(convert_to_tensor(out, convert_numeric=False, track_meta=self.track_meta))}
        try:
            _write_record(self.cache_dir, self.record)
            with atomic_write(hashfile) as tmp:
                torch.save(entry, tmp)
        except (OSError, RuntimeError) as e:  # torch.save's refusal is a RuntimeError naming no file
            if (problem := refused_write(e)) is None:
                raise
            raise PermissionError(errno.EACCES, f"cannot write cache files in {self.cache_dir} ({problem}): "
                                  f"{_UNWRITABLE_ADVICE}", str(hashfile)) from e  # fmt: skip


#: What :meth:`DiskCacheDataset._cached` returns for a cache file to write again.
_REBUILD = object()
#: The cache folders whose entries without a key this process has warned of (once each).
_KEYLESS_NOTED: set[str] = set()
#: The keys of a cache file's entry: the item's key (:func:`item_hash`) and the pre-processed item.
_KEY, _ITEM = "medgmae_cache_key", "item"
#: The advice of a cache folder that cannot be written.
_UNWRITABLE_ADVICE = ("the folder was made by another user or is read-only; give a --cache_dir of your own, or "
                      "have the folder made writable or removed")  # fmt: skip


def _unreadable_reason(hashfile: Path, error: Exception) -> str:
    """Why ``hashfile`` could not be read, in one line: not written by ``torch.save`` at all (zeroed, other
    bytes: torch's own words would blame ``weights_only`` or a legacy format), cut short, or torch's first line."""
    from medgmae.torch_files import torch_file_kind

    kind = torch_file_kind(hashfile)
    if kind == "other":
        return "not a cache file written by torch.save"
    if kind == "pickle":
        return "not a cache file: a torch.save file of the legacy (non-zip) format"
    if kind == "cut":
        return "truncated or damaged: its zip archive is incomplete"
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""  # torch's advice runs on for lines
    return type(error).__name__ + (f": {reason[:200]}" if reason else "")


def _status(path: Path) -> os.stat_result | None:
    """``path``'s status, ``None`` when it is gone."""
    try:
        return path.stat()
    except OSError:
        return None


def _compact(obj: Any) -> Any:
    """``obj`` with each tensor that is a view of a larger storage copied into its own: ``torch.save`` writes a
    tensor's whole storage, so a foreground crop (a view of the resampled volume) would store the voxels it cut
    away too."""
    if isinstance(obj, torch.Tensor):
        return obj.clone(memory_format=torch.contiguous_format) if obj.untyped_storage().nbytes() > obj.nbytes else obj
    if isinstance(obj, Mapping):
        return {k: _compact(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):  # (a named tuple or another sequence type is kept as it is)
        return type(obj)(_compact(v) for v in obj)
    return obj


#: The cache folders this process has named in its log.
_NAMED_FOLDERS: set[str] = set()


def training_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache_root: str | Path | None,
    spec: Mapping | None = None,
    cache_rate: float = 0.0,
    track_meta: bool = False,
    cache_workers: int = 0,
) -> PersistentDataset | CacheDataset:
    """The dataset of a training (or validation) run: the disk cache by default, RAM as an option.

    Args:
        data: datalist items.
        transform: deterministic head then random tail (a MONAI ``Compose``).
        cache_root: parent folder of disk caches (``None`` with ``cache_rate`` 0: no cache, every epoch
            pre-processes again).
        spec: the pre-processing record naming the cache (``PreprocessingSpec.to_dict()``).
        cache_rate: fraction kept pre-processed in RAM instead (0: disk cache only).
        track_meta: keep MetaTensors in the cache.
        cache_workers: threads filling the RAM cache.

    Returns:
        A MONAI dataset.

    Raises:
        ValueError: ``cache_rate`` is out of range.
    """
    if not 0.0 <= float(cache_rate) <= 1.0:
        raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate}")
    if float(cache_rate) > 0:
        return CacheDataset(data, transform, cache_rate=float(cache_rate), num_workers=int(cache_workers) or None,
                            progress=False)  # fmt: skip
    if cache_root is None or str(cache_root) == "":
        from monai.data import Dataset

        return Dataset(data, transform)
    record = preprocessing_record(transform, spec)
    folder = _named_folder(cache_root, record, create=False)  # created when its first item is built
    if str(folder) not in _NAMED_FOLDERS:  # a run's training and validation datasets share it: named once
        _NAMED_FOLDERS.add(str(folder))
        logger.info("pre-processed volumes are cached in %s", folder)
    if folder.is_dir() and (problem := output_dir_problem(folder)):  # another user's, on a shared cache: its
        # entries still serve (a hit writes nothing); a missing one stops the run at its write, naming the folder
        logger.warning("--cache_dir %r: %s: the cached volumes are read from it, and a volume not cached there "
                       "stops the run when it is written (%s)", str(cache_root), problem, _UNWRITABLE_ADVICE)  # fmt: skip
    left = remove_dead_writers_files(folder, "*.pt")
    claims = [p for p in left if CLAIM_NAME.match(p.name)]
    if len(left) > len(claims):
        logger.info("removed %s that killed runs left half-written in %s (%s)",
                    plural(len(left) - len(claims), "cache file"), folder, REMOVED_BECAUSE)  # fmt: skip
    if claims:
        logger.info("removed %s of pre-processing that killed runs left in %s (%s)", plural(len(claims), "claim"),
                    folder, REMOVED_BECAUSE)  # fmt: skip
    mmap = os.environ.get("MEDGMAE_CACHE_MMAP", "1").strip() != "0"  # see the module docstring
    return DiskCacheDataset(data, transform, folder, track_meta=track_meta, record=record, mmap=mmap)
