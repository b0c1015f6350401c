"""The disk cache of pre-processed volumes: keyed by the pre-processing, filled by several processes at once,
cleaned of killed writers' files; the RAM cache as an option."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandSpatialCropd

import medgmae.data.reader as reader_mod
from medgmae.data import LoadVolumed, training_dataset
import medgmae.data.cache as cache_mod
from medgmae.data.cache import DiskCacheDataset, item_hash
from medgmae.preprocessing import PreprocessingSpec

from data_helpers import nifti_file


def _chain(spec: PreprocessingSpec) -> Compose:
    return Compose([LoadVolumed("image")] + spec.transforms(["image"]) + [RandSpatialCropd("image", roi_size=4)])


def test_disk_cache_is_keyed_by_the_preprocessing(tmp_path, monkeypatch, caplog):
    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", np.random.default_rng(i).normal(0, 200, (12, 10, 8)).astype(np.float32))}
             for i in range(3)]  # fmt: skip
    reads = []
    real = reader_mod.read_volume
    monkeypatch.setattr(reader_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)

    def epoch(spec: PreprocessingSpec) -> tuple[DiskCacheDataset, list]:
        ds = training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict())
        return ds, [ds[i]["image"] for i in range(len(ds))]

    ds, first = epoch(spec)
    assert isinstance(ds, DiskCacheDataset) and len(reads) == 3
    files = sorted(Path(ds.cache_dir).glob("*.pt"))
    assert len(files) == 3 and not list(Path(ds.cache_dir).glob(".tmp-*"))
    # the cached arrays are the deterministic transforms' output, computed independently here
    direct = Compose([LoadVolumed("image")] + spec.transforms(["image"]))(items[0])["image"]
    cached = torch.load(Path(ds.cache_dir) / f"{item_hash(items[0]).decode()}.pt", weights_only=True)
    assert torch.equal(cached["item"]["image"], direct.as_tensor())
    assert cached["medgmae_cache_key"] == item_hash(items[0]).decode()  # the entry names its item
    reads.clear()
    ds2, _ = epoch(spec)
    assert reads == [] and ds2.cache_dir == ds.cache_dir  # same spec: the cache is reused, nothing decoded
    for changed in (PreprocessingSpec(spacing=3.0, input_size=4, patch_size=2),
                    PreprocessingSpec(spacing=2.0, hu_window=(-100, 300), input_size=4, patch_size=2)):  # fmt: skip
        reads.clear()
        ds3, _ = epoch(changed)
        assert ds3.cache_dir != ds.cache_dir and len(reads) == 3  # spacing / window changed: pre-processed again
    # a damaged cache file is pre-processed again, not a crash
    files[0].write_bytes(os.urandom(1000))  # random bytes: torch's refusal runs on for lines of advice
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        ds4, again = epoch(spec)
    assert len(reads) == 1 and all(a.shape == (1, 4, 4, 4) for a in again)
    said = [r.getMessage() for r in caplog.records if "unreadable cache file" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and said[0].endswith("pre-processing the item again"), said
    record = json.loads((Path(ds.cache_dir) / "preprocessing.json").read_text(encoding="utf-8"))
    assert record["spec"] == spec.to_dict()



def test_a_file_edited_in_place_to_the_same_size_is_read_again(tmp_path, monkeypatch):
    """A volume rewritten with other voxels of the same byte size (uncompressed NIfTI) and a new modification time
    is a new cache key: pre-processed again, and the new voxels are what the dataset gives."""
    path = tmp_path / "v.nii"
    old, new = (np.random.default_rng(i).normal(0, 200, (12, 10, 8)).astype(np.float32) for i in (0, 1))
    item = {"image": nifti_file(path, old)}
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    chain = Compose([LoadVolumed("image")] + spec.transforms(["image"]))
    reads = []
    real = reader_mod.read_volume
    monkeypatch.setattr(reader_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    first = training_dataset([item], chain, tmp_path / "cache", spec=spec.to_dict())[0]["image"]
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    key = item_hash(item)
    nifti_file(path, new)
    os.utime(path, ns=(mtime + 5 * 10**9, mtime + 5 * 10**9))
    assert path.stat().st_size == size
    assert item_hash(item) != key
    reads.clear()
    again = training_dataset([item], chain, tmp_path / "cache", spec=spec.to_dict())[0]["image"]
    assert reads == ["v.nii"]
    expected = Compose([LoadVolumed("image")] + spec.transforms(["image"]))({"image": str(path)})["image"]
    assert torch.equal(torch.as_tensor(again), expected.as_tensor())
    assert not torch.equal(torch.as_tensor(again), torch.as_tensor(first))


def test_the_disk_cache_removes_what_killed_writers_left(tmp_path, dead_pid, caplog):
    """A process killed while writing a cache file leaves its temporary file in a folder other runs share: a run
    removes those of writers no longer running on its host and a minute old, and no other file."""
    import time

    from medgmae.temp_names import host_tag

    items = [{"image": nifti_file(tmp_path / "v.nii.gz", np.random.default_rng(0).normal(0, 200, (12, 10, 8)).astype(np.float32))}]
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    folder = Path(training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict()).cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    host, old = host_tag(), time.time() - 3600
    killed = folder / f".tmp-{host}.{dead_pid}-0123456789ab-{'a' * 32}.pt"
    kept = [folder / f".tmp-{host}.{os.getpid()}-0123456789ab-{'b' * 32}.pt", folder / f".tmp-{host}x.{dead_pid}-0123456789ab-{'c' * 32}.pt"]
    for path in [killed, *kept]:
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    with caplog.at_level(logging.INFO, logger="medgmae"):
        ds = training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict())
    assert not killed.exists() and all(p.exists() for p in kept)
    assert any("removed 1 cache file that killed runs left" in r.getMessage() for r in caplog.records)
    assert ds[0]["image"].shape == (1, 4, 4, 4)


def test_ram_cache_is_an_option(tmp_path):
    from monai.data import CacheDataset

    items = [{"image": nifti_file(tmp_path / "v.nii.gz", np.arange(512, dtype=np.float32).reshape(8, 8, 8))}]
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    assert isinstance(training_dataset(items, _chain(spec), tmp_path / "cache", cache_rate=1.0), CacheDataset)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="cache_rate"):
        training_dataset(items, _chain(spec), tmp_path / "cache", cache_rate=1.5)


def _fill(args: tuple) -> list:
    items, cache_root, spec_dict = args
    spec = PreprocessingSpec(**spec_dict)
    ds = training_dataset(items, _chain(spec), cache_root, spec=spec.to_dict())
    return [tuple(ds[i]["image"].shape) for i in range(len(ds))] + [str(ds.cache_dir)]


def test_several_processes_fill_one_cache_at_once(tmp_path):
    """Four processes pre-process the same items into one cache at the same time (as DDP ranks or jobs sharing a
    cache do): every file is whole, no temporary file is left, and a later reader decodes nothing."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", np.random.default_rng(i).normal(0, 200, (24, 20, 16)).astype(np.float32))}
             for i in range(6)]  # fmt: skip
    spec = PreprocessingSpec(spacing=1.5, input_size=4, patch_size=2)
    # spawned, not forked: a fork after earlier tests started thread pools (ITK's, OpenMP's) can deadlock the child
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_fill, [(items, tmp_path / "cache", spec.to_dict())] * 4))
    folders = {r[-1] for r in results}
    assert len(folders) == 1 and all(r[:-1] == [(1, 4, 4, 4)] * 6 for r in results)
    folder = Path(folders.pop())
    assert len(list(folder.glob("*.pt"))) == 6 and not list(folder.glob(".tmp-*"))
    for f in folder.glob("*.pt"):
        torch.load(f, weights_only=True)  # whole files


def test_cache_files_are_read_memory_mapped_and_hold_only_their_crop(tmp_path):
    """A later epoch maps each cache file instead of reading it whole (a random crop then reads only its pages): the
    file is in the process's memory maps while an item drawn from it is alive, and the crops equal a whole read's.
    A foreground-cropped volume is stored as its own voxels, not the storage it was cut from (``torch.save`` writes
    a view's whole storage)."""
    from monai.transforms import CropForegroundd

    vol = np.full((20, 18, 16), -1000.0, np.float32)  # air, 0 after the window: cut away
    vol[5:12, 4:10, 3:9] = np.random.default_rng(0).normal(300, 50, (7, 6, 6))
    items = [{"image": nifti_file(tmp_path / "v.nii.gz", vol)}]
    spec = PreprocessingSpec(spacing=1.0, input_size=4, patch_size=2)
    head = [LoadVolumed("image"), *spec.transforms(["image"]), CropForegroundd("image", source_key="image")]
    chain = Compose(head + [RandSpatialCropd("image", roi_size=4)])
    ds = training_dataset(items, chain, tmp_path / "cache", spec=spec.to_dict())
    ds[0]  # fills the cache
    (path,) = Path(ds.cache_dir).glob("*.pt")
    stored = torch.load(path, weights_only=True)["item"]["image"]
    assert all(c < n for c, n in zip(stored.shape[1:], vol.shape))  # cut to the foreground
    assert stored.untyped_storage().nbytes() == stored.nbytes

    def maps() -> str:
        return Path("/proc/self/maps").read_text()

    if not Path("/proc/self/maps").is_file():
        pytest.skip("no /proc/self/maps to see the mapping in")
    chain.set_random_state(5)
    mapped = ds[0]["image"]
    assert str(path) in maps()
    ds.mmap = False
    chain.set_random_state(5)
    whole = ds[0]["image"]
    assert torch.equal(mapped, whole)
    del mapped, whole
    import gc

    gc.collect()
    assert str(path) not in maps()


def test_mapping_the_cache_files_can_be_turned_off(tmp_path, monkeypatch):
    """``MEDGMAE_CACHE_MMAP=0`` reads the cache files whole (a cache that other hosts rewrite: a mapped file cut
    short is SIGBUS, not an error)."""
    items = [{"image": nifti_file(tmp_path / "v.nii.gz", np.arange(512, dtype=np.float32).reshape(8, 8, 8))}]
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    assert training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict()).mmap is True
    monkeypatch.setenv("MEDGMAE_CACHE_MMAP", "0")
    assert training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict()).mmap is False


def test_a_mapped_cache_item_keeps_the_pre_processed_affine_of_an_oblique_anisotropic_volume(tmp_path):
    """With metadata kept (fine-tuning's validation, segmentation), the compacted, memory-mapped cache item is the
    pre-processed volume of an oblique, anisotropic scan with its affine, as a direct pre-processing gives them."""
    from monai.transforms import CropForegroundd

    from data_helpers import rotation

    vol = np.full((20, 18, 16), -1000.0, np.float32)
    vol[5:12, 4:10, 3:9] = np.random.default_rng(1).normal(300, 50, (7, 6, 6))
    affine = np.eye(4)
    affine[:3, :3] = rotation(3) @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    items = [{"image": nifti_file(tmp_path / "v.nii.gz", vol, affine)}]
    spec = PreprocessingSpec(spacing=(1.0, 1.2, 2.0), input_size=4, patch_size=2)
    head = Compose([LoadVolumed("image"), *spec.transforms(["image"]), CropForegroundd("image", source_key="image")])
    direct = head(dict(items[0]))["image"]
    ds = training_dataset(items, head, tmp_path / "cache", spec=spec.to_dict(), track_meta=True)
    ds[0]  # fills the cache
    mapped = ds[0]["image"]
    assert ds.mmap and torch.equal(mapped.as_tensor(), direct.as_tensor())
    np.testing.assert_allclose(np.asarray(mapped.affine), np.asarray(direct.affine), atol=1e-6)
    assert not np.allclose(np.asarray(direct.affine)[:3, :3], np.diag(np.diag(np.asarray(direct.affine)[:3, :3])))


def _head_and_items(tmp_path: Path, n: int) -> tuple[Compose, list[dict]]:
    """The deterministic head of a chain (an item is then the same on every read) and ``n`` volumes."""
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", np.random.default_rng(i).normal(0, 200, (12, 10, 8)).astype(np.float32))}
             for i in range(n)]  # fmt: skip
    return Compose([LoadVolumed("image")] + spec.transforms(["image"])), items


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cache file" in r.getMessage()]


def test_a_cache_file_holding_another_items_volume_or_another_file_is_rebuilt(tmp_path, caplog, monkeypatch):
    """Each cache file holds its item's key: two files swapped, a model file copied over one, or a file of the
    format before keys were stored are not used as the item's volume; each is said once, naming the file, and
    written again."""
    head, items = _head_and_items(tmp_path, 3)
    direct = [head(dict(item))["image"].as_tensor() for item in items]  # pre-processed without the cache
    ds = training_dataset(items, head, tmp_path / "cache")
    [ds[i] for i in range(3)]
    a, b, c = (Path(ds.cache_dir) / f"{item_hash(item).decode()}.pt" for item in items)
    swap = tmp_path / "swap.pt"
    a.rename(swap), b.rename(a), swap.rename(b)  # the two entries swapped
    torch.save({"state_dict": {"w": torch.zeros(3)}, "kind": "medgmae"}, c)  # a model file copied over the entry
    for round_ in range(2):  # a rebuilt file is used as it is from then on
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medgmae"):
            got = [training_dataset(items, head, tmp_path / "cache")[i]["image"] for i in range(3)]
        assert all(torch.equal(g.as_tensor() if hasattr(g, "as_tensor") else g, d) for g, d in zip(got, direct))
        said = _cache_warnings(caplog)
        if round_ == 0:
            swapped = [m for m in said if "not this item's cache entry" in m]
            assert sorted(m.split()[2] for m in swapped) == sorted(map(str, (a, b))), said
            assert all(m.endswith("rebuilt") for m in swapped), said
            (keyless,) = [m for m in said if m not in swapped]  # the file without a key: said once for its folder
            assert "hold no cache key" in keyless and str(c.parent) in keyless and c.name in keyless, said
        else:
            assert said == []
    torch.save({"image": direct[0]}, a)  # an entry without its key, as the format before keys were stored
    torch.save({"image": direct[1]}, b)
    monkeypatch.setattr(cache_mod, "_KEYLESS_NOTED", set())  # a new process: not yet said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        again = training_dataset(items, head, tmp_path / "cache")
        again[0], again[1]
    (said,) = _cache_warnings(caplog)  # one warning for the folder, not one per file (an upgrade's whole cache)
    assert str(a.parent) in said and a.name in said, said
    assert torch.load(a, weights_only=True)["medgmae_cache_key"] == item_hash(items[0]).decode()
    assert torch.load(b, weights_only=True)["medgmae_cache_key"] == item_hash(items[1]).decode()


def test_a_zeroed_cache_file_is_said_to_be_no_torch_file(tmp_path, caplog):
    """A cache file of zeros (a crash of the file system) is rebuilt with a warning saying what it is, not torch's
    advice about ``weights_only`` and legacy formats."""
    head, items = _head_and_items(tmp_path, 1)
    ds = training_dataset(items, head, tmp_path / "cache")
    ds[0]
    (path,) = Path(ds.cache_dir).glob("*.pt")
    path.write_bytes(bytes(path.stat().st_size))
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        item = training_dataset(items, head, tmp_path / "cache")[0]
    assert torch.equal(item["image"], head(dict(items[0]))["image"].as_tensor())
    (said,) = _cache_warnings(caplog)
    assert str(path) in said and "not a cache file written by torch.save" in said, said
    assert "legacy" not in said and "weights_only" not in said, said


def test_a_cache_folder_that_cannot_be_written_is_warned_at_the_start_and_named_when_writing(tmp_path, monkeypatch, caplog):
    """The cache folder of this pre-processing made by another user (files cannot be created in it) is warned
    when the dataset is built, naming the folder and --cache_dir, and its entries still serve (a hit writes
    nothing); a write refused later names them too, not torch's words alone."""
    from data_helpers import read_only_folder

    head, items = _head_and_items(tmp_path, 2)
    ds = training_dataset(items, head, tmp_path / "cache")
    first = ds[0]
    folder = Path(ds.cache_dir)
    read_only_folder(monkeypatch, folder)
    with caplog.at_level(logging.WARNING):
        ds = training_dataset(items, head, tmp_path / "cache")
    warned = [r.getMessage() for r in caplog.records if "--cache_dir" in r.getMessage()]
    assert len(warned) == 1 and str(folder) in warned[0] and "another user" in warned[0]
    assert torch.equal(torch.as_tensor(ds[0]["image"]), torch.as_tensor(first["image"]))  # the entry served

    def refused_save(obj, f, *args, **kwargs):  # torch.save's own words for a folder it may not write
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Permission denied")

    monkeypatch.setattr(torch, "save", refused_save)
    with pytest.raises(PermissionError, match="--cache_dir") as failed:
        ds[1]
    assert str(folder) in str(failed.value) and "Permission denied" in str(failed.value)
    assert {p.name for p in folder.iterdir()} == {"preprocessing.json", f"{item_hash(items[0]).decode()}.pt"}


def test_the_cache_files_of_an_earlier_layout_live_in_another_folder(tmp_path):
    """The earlier release stored the bare item in each file and named the folder by the hash of ``{"spec",
    "transforms"}``: sharing that folder, it would read this release's files (the item beside its key) as items
    and fail in its random transforms. This release's folder is another, whose record says the files' layout."""
    import hashlib

    head, items = _head_and_items(tmp_path, 1)
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2).to_dict()
    ds = training_dataset(items, head, tmp_path / "cache", spec=spec)
    ds[0]
    record = json.loads((Path(ds.cache_dir) / "preprocessing.json").read_text(encoding="utf-8"))
    earlier = {"spec": record["spec"], "transforms": record["transforms"]}  # the earlier release's record
    earlier_name = hashlib.sha256(json.dumps(earlier, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert record["entry_format"] == 2 and Path(ds.cache_dir).name != earlier_name
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [Path(ds.cache_dir).name]
