"""The pixel budget, owned by :mod:`tools.bpg.limits` (the lowest layer: the BPG command checks it
too); this name is the one the pipeline and the trainer import."""
from tools.bpg.limits import DEFAULT_MAX_PIXELS, ENV, PixelBudgetError, check_pixels, max_pixels, set_max_pixels

__all__ = ["DEFAULT_MAX_PIXELS", "ENV", "PixelBudgetError", "check_pixels", "max_pixels", "set_max_pixels"]
