"""GViT: images as sets of 2D Gaussians for classification.

A 2D Gaussian is a vector of ``6 + C`` raw numbers ``g = (m_x, m_y, s_x, s_y, phi, colour_1..C, o)``: for RGB
images that is the 9 numbers of the paper's text (centre 2, scale 2, rotation angle 1, colour 3, opacity 1; its
Algorithm 1 decodes 14, ``[3, 4, 3, 1, 3]``, and zeroes z and two quaternion components). The raw vector
is what the encoder predicts, what the classifier reads and what the guidance gradient of equation (1) acts on;
:func:`decode_gaussians_2d` maps it to renderable parameters:

* centre ``tanh(m)`` in the image-plane frame ``[-1, 1]^2`` (x along the width, y along the height),
* scales ``c * sigmoid(s)`` (standard deviations in the same frame, so ``c = 1`` allows at most half the image
  width; ``c`` = ``scale_factor``, default 1.0. The paper's best c is 1.0 as well, but its unit is not this one:
  its c = 0.5 keeps a Gaussian to "a few pixels" of a 224-pixel image; the bundle README's deviations table),
* rotation angle ``phi`` in radians (unbounded, used through ``cos`` / ``sin``),
* colour and opacity ``sigmoid``.

Modules:

* :class:`DenoisingGaussianEncoder`: image patches plus ``K`` randomly sampled Gaussian tokens ``g0`` through a
  ViT (:class:`~medgmae.networks.vit.MaskedViTEncoder`); an MLP on the Gaussian outputs predicts a residual,
  ``g = g0 + delta``. ``mode="queries"`` is the learned-query variant (``K`` learned tokens, ``g = MLP(x)``).
* :class:`GaussianViTClassifier`: a ViT whose tokens are embedded Gaussians (no patches, no index positions:
  a Gaussian's position is its centre), with a class token. It takes any number ``K`` of Gaussians and its
  output does not depend on their order.
* :class:`GViT`: the encoder and the classifier together; ``forward(image) -> logits``.
* :class:`PatchViTClassifier`: the patch-token ViT baseline of the same width and depth as the classifier.

Modules: :mod:`~medgmae.twod.gvit.tokens` (Gaussian vectors and their embedding), :mod:`~medgmae.twod.gvit.encoder`,
:mod:`~medgmae.twod.gvit.classifier` and :mod:`~medgmae.twod.gvit.model` (:class:`GViT` and its ``model.pt``
I/O).
"""

from medgmae.twod.gvit.classifier import GaussianViTClassifier, PatchViTClassifier
from medgmae.twod.gvit.encoder import ENCODER_MODES, DenoisingGaussianEncoder
from medgmae.twod.gvit.model import GViT, load_gvit, save_gvit
from medgmae.twod.gvit.tokens import (
    GaussianTokenEmbedding,
    Gaussians2D,
    decode_gaussians_2d,
    gaussian_dim,
    sample_gaussian_tokens,
)

__all__ = [
    "Gaussians2D",
    "gaussian_dim",
    "decode_gaussians_2d",
    "sample_gaussian_tokens",
    "GaussianTokenEmbedding",
    "DenoisingGaussianEncoder",
    "GaussianViTClassifier",
    "GViT",
    "PatchViTClassifier",
    "ENCODER_MODES",
    "load_gvit",
    "save_gvit",
]
