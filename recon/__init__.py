"""CT reconstruction: geometries, differentiable projectors, FBP/FDK and Gaussian (3DGR-CT) reconstruction
with random, FBP or zero-shot MedGMAE initialisation.

The names below are imported on first use, so that ``python -m recon`` reaches its ``__main__`` (and its Ctrl-C
handling) before torch is imported."""

from medgmae.lazy_names import lazy_names

__all__ = ["CTGeometry", "Projector", "TorchProjector", "AstraProjector", "make_projector"]

#: Each public name's module, imported on first use.
_HOMES = {"CTGeometry": "recon.geometry", "Projector": "recon.projectors", "TorchProjector": "recon.projectors",
          "AstraProjector": "recon.projectors", "make_projector": "recon.projectors"}  # fmt: skip
__getattr__ = lazy_names(__name__, _HOMES)
