"""Builds the Cython codec.

The extension is built unless FASTFRAME_NO_EXTENSIONS=1 or the interpreter is
not CPython; a compile error fails the install rather than falling back to the
pure-Python codec without saying so.
"""
import os
import platform
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = (os.environ.get("FASTFRAME_NO_EXTENSIONS", "") not in ("", "0")
                 or platform.python_implementation() != "CPython")

# Python's own compile flags carry -g, which makes the extension 2.7 MB of
# mostly debug info; a wheel ships it without (about 0.4 MB). -Wl,-S drops it
# with GNU ld and macOS ld alike; MSVC keeps debug info out of the .pyd anyway.
# CFLAGS naming -g (a debugging or sanitizer build) keep it.
KEEP_DEBUG_INFO = sys.platform == "win32" or "-g" in os.environ.get("CFLAGS", "").split()

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("fastframe._codec_c", ["src/fastframe/_codec_c.pyx"],
                   extra_link_args=[] if KEEP_DEBUG_INFO else ["-Wl,-S"])],
        compiler_directives={"language_level": "3", "embedsignature": True},
    )

setup(ext_modules=ext_modules)
