"""3D data: the one volume reader, datalists, the pre-check, the disk-cached datasets and the phantom generator.

* :mod:`medgmae.data.reader`: :func:`read_volume` (NIfTI, NRRD, MetaImage, DICOM series) and ``LoadVolumed``.
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
"""

from medgmae.data.cache import DiskCacheDataset, cache_folder, training_dataset
from medgmae.data.datalist import DatasetError, read_datalist
from medgmae.data.phantom import ORGAN_LABELS, Phantom, generate_phantom, write_phantom_dataset
from medgmae.data.precheck import check_datalist, check_item
from medgmae.data.input_checks import WarnIfNotHUd, WarnIfPaddedd
from medgmae.data.reader import LoadVolumed, Volume, read_volume
from medgmae.data.sources import phantom_dataset, resolve_datalist
from medgmae.data.volume_folders import folder_datalist

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
