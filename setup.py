"""Builds the Cython codec.

The extension is built unless FASTFRAME_NO_EXTENSIONS=1 or the interpreter is
not CPython; a compile error fails the install rather than falling back to the
pure-Python codec without saying so.
"""
import os
import platform

from setuptools import Extension, setup

NO_EXTENSIONS = (os.environ.get("FASTFRAME_NO_EXTENSIONS", "") not in ("", "0")
                 or platform.python_implementation() != "CPython")

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("fastframe._codec_c", ["src/fastframe/_codec_c.pyx"])],
        compiler_directives={"language_level": "3", "embedsignature": True},
    )

setup(ext_modules=ext_modules)
