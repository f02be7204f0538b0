"""The one conversion of any decoded picture to 8-bit RGB, owned by :mod:`tools.bpg.image`
(the lowest layer: the BPG command converts its input the same way); this is the name the
pipeline's decoders and crops, the loader and the receiver use.

- grey, palette, CMYK, YCbCr: Pillow's own conversion;
- alpha (RGBA, LA, PA, palette with transparency): composited over white, as a viewer shows
  the picture (dropping alpha would expose whatever colour hides behind alpha 0);
- 16-bit grey: scaled by 255/65535, not clipped at 255 (which turns a photo white).
"""
from tools.bpg.image import to_rgb, to_rgb_array

__all__ = ["to_rgb", "to_rgb_array"]
