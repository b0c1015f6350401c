"""3D data: the one volume reader, datalists, the pre-check, the disk-cached datasets and the phantom generator.

* :mod:`medgmae.data.reader`: :func:`read_volume` (NIfTI, NRRD, MetaImage, DICOM series) and ``LoadVolumed`` (MONAI
  imported when it is first asked for).
* :mod:`medgmae.data.sources`: where training data comes from: a Decathlon datalist, a folder of volumes or
  generated phantoms.
* :mod:`medgmae.data.datalist`: a Decathlon datalist file read, its lists checked and their paths resolved.
* :mod:`medgmae.data.volume_folders`: a folder of volumes as a datalist, what it leaves out logged.
* :mod:`medgmae.data.precheck`: every file opened once before training, all problems reported in one error.
* :mod:`medgmae.data.input_checks`: warnings about volumes that load but do not fit the model (units, size).
* :mod:`medgmae.data.grid`: whether two volumes are on the same voxel grid (the one check, tolerance and message).
* :mod:`medgmae.data.cache`: the deterministic pre-processing cached on disk, keyed by the pre-processing spec.
* :mod:`medgmae.data.augmentation`: the paper's augmentation of pre-training crops (the bundle's ``augment``).
* :mod:`medgmae.data.phantom`: the synthetic abdominal CT phantom generator.

Pre-training (:mod:`medgmae.mae_training.data`) and fine-tuning (:mod:`medgmae.finetune.data`) build on these.

The names below are imported from their modules on first use (:mod:`medgmae.lazy_names`), so that importing one
light module of this package (the datalist tool, the volume reader) does not load MONAI.
"""

from medgmae.lazy_names import lazy_names

__all__ = [
    "ORGAN_LABELS",
    "DatasetError",
    "DiskCacheDataset",
    "LoadVolumed",
    "WarnIfNotHUd",
    "WarnIfPaddedd",
    "Phantom",
    "Volume",
    "cache_folder",
    "check_item",
    "folder_datalist",
    "generate_phantom",
    "phantom_dataset",
    "check_datalist",
    "read_datalist",
    "read_volume",
    "resolve_datalist",
    "training_dataset",
    "write_phantom_dataset",
]

#: Each public name's module, imported on first use.
_HOMES = {
    "DiskCacheDataset": "medgmae.data.cache",
    "cache_folder": "medgmae.data.cache",
    "training_dataset": "medgmae.data.cache",
    "DatasetError": "medgmae.data.datalist",
    "read_datalist": "medgmae.data.datalist",
    "ORGAN_LABELS": "medgmae.data.phantom",
    "Phantom": "medgmae.data.phantom",
    "generate_phantom": "medgmae.data.phantom",
    "write_phantom_dataset": "medgmae.data.phantom",
    "check_datalist": "medgmae.data.precheck",
    "check_item": "medgmae.data.precheck",
    "WarnIfNotHUd": "medgmae.data.input_checks",
    "WarnIfPaddedd": "medgmae.data.input_checks",
    "LoadVolumed": "medgmae.data.reader",
    "Volume": "medgmae.data.reader",
    "read_volume": "medgmae.data.reader",
    "phantom_dataset": "medgmae.data.sources",
    "resolve_datalist": "medgmae.data.sources",
    "folder_datalist": "medgmae.data.volume_folders",
}
__getattr__ = lazy_names(__name__, _HOMES)
