"""Which codec ``import fastframe`` picks (fastframe/codec.py), each case in a fresh interpreter.

The default must be the Cython extension: ``test_default_is_the_extension``
fails when it has not been built; it skips (``needs_extension``, conftest.py)
only where the package is pure by design (PyPy, FASTFRAME_NO_EXTENSIONS=1).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPORT = textwrap.dedent("""
    import fastframe, fastframe.codec
    print(fastframe.codec.__impl__, fastframe.__impl__, fastframe.codec.impl.__name__)
""")

# A finder that makes the extension unimportable, as on a machine where it was never built.
BLOCK_EXTENSION = textwrap.dedent("""
    import sys

    class BlockExtension:
        def find_spec(self, name, path=None, target=None):
            if name == "fastframe._codec_c":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockExtension())
""")


def clean_env(**settings: str) -> dict:
    """A copy of the environment without FASTFRAME_* variables, plus ``settings``.

    PYTHONPATH entries are made absolute, so ``PYTHONPATH=src`` works whatever
    the child's working directory.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTFRAME_")}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    env.update(settings)
    return env


def run(code: str, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=clean_env(**settings),
                          cwd=os.path.dirname(__file__), capture_output=True, text=True,
                          timeout=60)


def impl_of(code: str = REPORT, **settings: str) -> list:
    result = run(code, **settings)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def import_error(code: str = REPORT, **settings: str) -> str:
    result = run(code, **settings)
    assert result.returncode != 0, f"import succeeded: {result.stdout}"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(("ImportError:", "ModuleNotFoundError:")), result.stderr
    return last


@pytest.mark.needs_extension
def test_default_is_the_extension():
    assert impl_of() == ["c", "c", "fastframe._codec_c"]


@pytest.mark.parametrize("settings", [
    {"FASTFRAME_PUREPYTHON": "1"},
    {"FASTFRAME_PUREPYTHON": "yes"},
    {"FASTFRAME_IMPL": "python"},
    {"FASTFRAME_IMPL": "Python "},
    {"FASTFRAME_IMPL": "python", "FASTFRAME_PUREPYTHON": "1"},
], ids=["purepython", "purepython-yes", "impl-python", "impl-python-spelling", "both"])
def test_pure_python_on_request(settings):
    assert impl_of(**settings) == ["python", "python", "fastframe._codec_py"]


@pytest.mark.parametrize("settings", [
    {"FASTFRAME_IMPL": "c"},
    {"FASTFRAME_IMPL": "C"},
    {"FASTFRAME_IMPL": "c", "FASTFRAME_PUREPYTHON": "0"},
    {"FASTFRAME_PUREPYTHON": "0"},
    {"FASTFRAME_PUREPYTHON": ""},
], ids=["impl-c", "impl-upper-c", "impl-c-pure-0", "pure-0", "pure-empty"])
@pytest.mark.needs_extension
def test_extension_on_request(settings):
    assert impl_of(**settings) == ["c", "c", "fastframe._codec_c"]


@pytest.mark.parametrize("value", ["bogus", "cython", "pure"])
def test_unknown_impl_is_an_import_error(value):
    message = import_error(FASTFRAME_IMPL=value)
    assert message.startswith("ImportError:") and "FASTFRAME_IMPL" in message and value in message


def test_impl_c_contradicting_purepython_is_an_import_error():
    message = import_error(FASTFRAME_IMPL="c", FASTFRAME_PUREPYTHON="1")
    assert message.startswith("ImportError:") and "FASTFRAME_PUREPYTHON" in message


def test_impl_c_without_the_extension_is_an_import_error():
    message = import_error(BLOCK_EXTENSION + REPORT, FASTFRAME_IMPL="c")
    assert message.startswith("ImportError:") and "FASTFRAME_IMPL=c" in message


def test_default_without_the_extension_falls_back_to_python():
    assert impl_of(BLOCK_EXTENSION + REPORT) == ["python", "python", "fastframe._codec_py"]


@pytest.mark.needs_extension
def test_codec_functions_come_from_the_chosen_implementation():
    code = textwrap.dedent("""
        import fastframe.codec as codec
        from fastframe._codec_py import __all__
        print(all(getattr(codec, n) is getattr(codec.impl, n) for n in __all__))
    """)
    assert impl_of(code, FASTFRAME_IMPL="c") == ["True"]
    assert impl_of(code, FASTFRAME_PUREPYTHON="1") == ["True"]
