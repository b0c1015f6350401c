"""MedGMAE: Gaussian masked autoencoders for medical imaging, on MONAI and PyTorch.

The subpackages, each imported on its own (``import medgmae`` itself loads nothing heavy):

* :mod:`medgmae.networks` -- MedGMAE, MedGMAE* and the voxel-MAE baseline (``MedGMAE``, ``VoxelMAE``), the masked
  ViT encoder;
* :mod:`medgmae.render` -- the voxel-accumulation renderer (``render_volume``: Triton on CUDA, PyTorch elsewhere);
* :mod:`medgmae.gaussians` -- ``Gaussians3D`` and its frames (normalised, voxel, world); :mod:`medgmae.ply` PLY files;
* :mod:`medgmae.checkpoint` -- the one model-file format and its loader; :mod:`medgmae.preprocessing` the
  pre-processing a model records (``PreprocessingSpec``);
* :mod:`medgmae.zeroshot` -- a scan's Gaussians in world millimetres from a pre-trained model;
* :mod:`medgmae.data` -- reading volumes (NIfTI, NRRD, MetaImage, DICOM), datalists, the pre-check, phantoms;
* :mod:`medgmae.mae_training`, :mod:`medgmae.finetune`, :mod:`medgmae.twod`, :mod:`medgmae.engine` -- what the
  MONAI bundles in ``bundles/`` run; the CT reconstruction is the sibling package ``recon``.

The README's architecture section lists every module.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medgmae")
except PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "unknown"

__all__ = ["__version__"]
