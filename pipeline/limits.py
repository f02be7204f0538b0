"""The decode budget and the bounded opening of user files, owned by :mod:`tools.bpg.limits`
(the lowest layer: the BPG command decodes and reads files too); this name is the one the
pipeline and the trainer import."""
from tools.bpg.limits import (DEFAULT_BUDGET, DEFAULT_MAX_PIXELS, ENV, DecodeBudget, FileKindError, PixelBudgetError,
                              check_pixels, check_regular, max_pixels_option, open_regular, open_regular_file, read_regular)

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MAX_PIXELS", "ENV", "DecodeBudget", "FileKindError", "PixelBudgetError",
           "check_pixels", "check_regular", "max_pixels_option", "open_regular", "open_regular_file", "read_regular"]
