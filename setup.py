"""Packaging of tftrt_lite, including the build of its TftrtLiteEngine op library.

Install with ``pip install --no-build-isolation .`` (or ``-e .``). The op library is
compiled against the headers and ``libtensorflow_framework`` of the TensorFlow that is
installed, so TensorFlow must be importable while building. Build isolation would
instead download and unpack a second ~600 MB TensorFlow into a throw-away environment
on every install, and the library would be built against that copy rather than the one
it will be loaded into.

Only ``g++`` is needed: the op library includes no CUDA headers. The library is named
``_tftrt_lite_ops.so`` without a Python ABI tag because it is a TensorFlow op library,
not a Python extension: it depends on the TensorFlow release, not on the interpreter.
Next to it the build writes ``_build_info.json`` (the TensorFlow version and flags it
was built against), which ``tftrt_lite.runtime.oplib`` checks before loading it.
"""
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CC_DIR = os.path.join("tftrt_lite", "runtime", "cc")
OP_LIBRARY = "tftrt_lite.runtime._tftrt_lite_ops"
BUILD_INFO_FILE = "_build_info.json"
CXXFLAGS = ["-O2", "-fPIC", "-shared", "-std=c++17", "-DGOOGLE_CUDA=1",
            # TensorFlow's own headers trip these; they say nothing about our code.
            "-Wno-deprecated-declarations", "-Wno-interference-size"]


def read_version():
    with open(os.path.join(HERE, "tftrt_lite", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("tftrt_lite/__init__.py defines no __version__")
    return match.group(1)


class BuildOpLibrary(build_ext):
    """Compiles ``tftrt_lite/runtime/cc/*.cc`` into the op library with g++."""

    def initialize_options(self):
        super().initialize_options()
        self._build_info_paths = {}

    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext):
        try:
            import tensorflow as tf
        except ImportError as e:
            raise RuntimeError(
                "building the TftrtLiteEngine op library needs TensorFlow importable at "
                "build time: install tensorflow==2.21.* first, then install tftrt_lite "
                "with `pip install --no-build-isolation .`") from e
        output = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        cxx = os.environ.get("CXX", "g++")
        compile_flags = tf.sysconfig.get_compile_flags()
        link_flags = tf.sysconfig.get_link_flags()
        command = [cxx, *CXXFLAGS, f"-I{CC_DIR}", *compile_flags, *ext.sources,
                   "-o", output, *link_flags]
        print("building the TftrtLiteEngine op library:\n  " + shlex.join(command))
        start = time.perf_counter()
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise RuntimeError(
                f"{cxx} failed (exit {result.returncode}) building {output}; "
                "its errors are printed above")
        print(f"built {output} in {time.perf_counter() - start:.1f} s")
        info = {
            "tf_version": tf.__version__,
            "tf_git_version": tf.version.GIT_VERSION,
            "tf_compile_flags": compile_flags,
            "tf_link_flags": link_flags,
            "cxx": cxx,
            "cxxflags": CXXFLAGS,
            "sources": sorted(os.path.basename(s) for s in ext.sources),
        }
        info_path = os.path.join(os.path.dirname(output), BUILD_INFO_FILE)
        with open(info_path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        self._build_info_paths[ext.name] = info_path

    def copy_extensions_to_source(self):
        """In-place and editable builds: the build record travels with the library."""
        super().copy_extensions_to_source()
        for ext in self.extensions:
            built_info = self._build_info_paths[ext.name]
            inplace_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            self.copy_file(built_info, os.path.join(inplace_dir, BUILD_INFO_FILE),
                           level=self.verbose)


setup(
    name="tftrt_lite",
    version=read_version(),
    description="TF-TRT's converter for TensorFlow 2.21, with fused GPU engines instead of TensorRT",
    packages=find_packages(include=["tftrt_lite*"]),
    ext_modules=[Extension(
        OP_LIBRARY,
        sources=sorted(glob.glob(os.path.join(CC_DIR, "*.cc"))),
        depends=sorted(glob.glob(os.path.join(CC_DIR, "*.h"))),
        language="c++",
    )],
    cmdclass={"build_ext": BuildOpLibrary},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "numpy",
        "onnx",
        "tf2onnx==1.17.0",
        "tqdm",
        "ml_dtypes",
        "cupy-cuda12x",
        "nvidia-cuda-nvrtc-cu12",
    ],
    entry_points={"console_scripts": ["tftrt-lite=tftrt_lite.cli:main"]},
    zip_safe=False,
)
