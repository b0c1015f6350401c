"""The zero-shot layering's default layer counts (:mod:`medgmae.twod.layering` re-exports them), apart so that
``medgmae-2d``'s parser shows them without importing torch. No imports."""

__all__ = ["DEFAULT_GRANULARITIES", "DEFAULT_NUM_LAYERS"]

#: Figure-ground layers, and the layer counts of the edge maps, unless asked otherwise (``medgmae-2d``, the bench).
DEFAULT_NUM_LAYERS = 16
DEFAULT_GRANULARITIES = (4, 8, 16)
