"""2D Gaussian models: 2D GMAE (masked autoencoder with a splatting decoder) and GViT (Gaussian-token classifier).

Modules: :mod:`~medgmae.twod.render` (the splatting renderer's entry points), :mod:`~medgmae.twod.compositor`
(its PyTorch compositor and conventions), :mod:`~medgmae.twod.gsplat_backend` (its gsplat backend and the choice of
backend), :mod:`~medgmae.twod.gmae` (2D GMAE),
:mod:`~medgmae.twod.layering` (its zero-shot depth layering, figure-ground and edges), :mod:`~medgmae.twod.cli`
(``medgmae-2d``; its work in :mod:`~medgmae.twod.zero_shot_command`), :mod:`~medgmae.twod.images` (the 2D
image reader and PNG writers; its NIfTI slices in
:mod:`~medgmae.twod.nifti_slices`), :mod:`~medgmae.twod.windows`
(the intensity window setting), :mod:`~medgmae.twod.data2d`
(the loader, phantom slices and the 2D GMAE dataset), :mod:`~medgmae.twod.image_folders` (the one listing of
the 2D image folders), :mod:`~medgmae.twod.gvit` (GViT), :mod:`~medgmae.twod.guidance`,
:mod:`~medgmae.twod.gvit_train`, :mod:`~medgmae.twod.gvit_eval` and :mod:`~medgmae.twod.classification_data`.
"""

from medgmae.lazy_names import lazy_names

__all__ = ["GMAE2D", "SplatGaussians"]

#: Each public name's module, imported on first use (torch and MONAI: not for ``medgmae-2d --help``).
__getattr__ = lazy_names(__name__, {"GMAE2D": "medgmae.twod.gmae", "SplatGaussians": "medgmae.twod.gmae"})
