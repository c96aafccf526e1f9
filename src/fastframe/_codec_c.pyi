# The Cython codec has exactly the pure codec's API; its types are those.
from ._codec_py import *  # noqa: F401,F403
from ._codec_py import __all__ as __all__
