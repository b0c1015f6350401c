"""CT reconstruction: geometries, differentiable projectors, FBP/FDK and Gaussian (3DGR-CT) reconstruction
with random, FBP or zero-shot MedGMAE initialisation."""

from recon.geometry import CTGeometry
from recon.projectors import AstraProjector, Projector, TorchProjector, make_projector

__all__ = ["CTGeometry", "Projector", "TorchProjector", "AstraProjector", "make_projector"]
