"""Data: the synthetic abdominal CT phantom generator (:mod:`medgmae.data.phantom`).

The MONAI loading pipelines live beside the code that uses them: :mod:`medgmae.pretrain.data` (pre-training
datalists, folders and volume checks) and :mod:`medgmae.finetune.data` (segmentation datalists, label fractions,
per-case checks).
"""

from medgmae.data.phantom import ORGAN_LABELS, Phantom, generate_phantom, write_phantom_dataset

__all__ = ["ORGAN_LABELS", "Phantom", "generate_phantom", "write_phantom_dataset"]
