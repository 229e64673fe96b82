"""Weight initializers for lamina's PyTorch layouts (`(out, in, *kernel)`).

See `lamina._src.layers.initializers` for how fans are read.
"""

from lamina._src.layers.initializers import *  # noqa: F401,F403
from lamina._src.layers.initializers import __all__  # noqa: F401
