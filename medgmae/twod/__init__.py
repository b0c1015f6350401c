"""2D Gaussian masked autoencoders: the splatting renderer, 2D GMAE and its zero-shot layering tools."""

from medgmae.twod.gmae import GMAE2D, GMAE2D_KIND, SplatGaussians
from medgmae.twod.render import BACKENDS, project_gaussians_2d, render_2d_gaussians, render_gaussians_2d, set_gsplat_cache_dir

__all__ = [
    "BACKENDS",
    "GMAE2D",
    "GMAE2D_KIND",
    "SplatGaussians",
    "project_gaussians_2d",
    "render_2d_gaussians",
    "render_gaussians_2d",
    "set_gsplat_cache_dir",
]
