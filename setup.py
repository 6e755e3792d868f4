"""Packaging of tftrt_lite, including the build of its TftrtLiteEngine op library.

Install with ``pip install --no-build-isolation .`` (or ``-e .``). The op library is
compiled against the headers and ``libtensorflow_framework`` of the TensorFlow that is
installed, so TensorFlow must be importable while building. Build isolation would
instead download and unpack a second ~600 MB TensorFlow into a throw-away environment
on every install, and the library would be built against that copy rather than the one
it will be loaded into.

Only ``g++`` is needed, no CUDA toolkit: the GPU plan executor uses the CUDA, cuBLASLt
and cuDNN headers that ship inside the TensorFlow wheel (types only; the libraries are
dlopened at run time). The library is named ``_tftrt_lite_ops.so`` without a Python ABI
tag because it is a TensorFlow op library, not a Python extension: it depends on the
TensorFlow release, not on the interpreter. Next to it the build writes
``_build_info.json`` (the TensorFlow version and flags it was built against), which
``tftrt_lite.runtime.oplib`` checks before loading it.

A second library, ``_tftrt_lite_executor.so``, is the same executor behind a small C
API (``harness.cc``) with no TensorFlow in it, which tests drive with CuPy buffers.
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
EXECUTOR_LIBRARY = "tftrt_lite.runtime._tftrt_lite_executor"
EXECUTOR_SOURCES = [os.path.join(CC_DIR, f) for f in ("executor.cc", "tactics.cc", "cuda_api.cc")]
HARNESS_SOURCE = os.path.join(CC_DIR, "harness.cc")
#: header folders under TensorFlow's include dir: cuda.h (cuda_cudart, which needs
#: cuda_nvcc's crt/ and cccl's nv/target), cublasLt.h, cudnn.h
CUDA_HEADER_DIRS = ["cuda_cudart/include", "cuda_nvcc/include", "cuda_cccl/libcudacxx/include",
                    "cuda_cublas/include", "cuda_cudnn/include"]
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


def cuda_include_flags(tf_include):
    flags = []
    for sub in CUDA_HEADER_DIRS:
        path = os.path.join(tf_include, "external", sub)
        if not os.path.isdir(path):
            raise RuntimeError(f"the TensorFlow wheel lacks the CUDA headers folder {path}; the GPU "
                               f"executor is built against the headers TensorFlow 2.21 ships there")
        flags.append(f"-I{path}")
    return flags


class BuildOpLibrary(build_ext):
    """Compiles the op library (every ``runtime/cc/*.cc`` but the harness, with TensorFlow's
    flags) and the TensorFlow-free executor harness library with g++."""

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
        cuda_flags = cuda_include_flags(tf.sysconfig.get_include())
        if ext.name == EXECUTOR_LIBRARY:
            command = [cxx, *CXXFLAGS, f"-I{CC_DIR}", *cuda_flags, *ext.sources, "-o", output, "-ldl"]
            what = "the executor harness library"
        else:
            compile_flags = tf.sysconfig.get_compile_flags()
            link_flags = tf.sysconfig.get_link_flags()
            command = [cxx, *CXXFLAGS, f"-I{CC_DIR}", *cuda_flags, *compile_flags, *ext.sources,
                       "-o", output, *link_flags, "-ldl"]
            what = "the TftrtLiteEngine op library"
        print(f"building {what}:\n  " + shlex.join(command))
        start = time.perf_counter()
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise RuntimeError(
                f"{cxx} failed (exit {result.returncode}) building {output}; "
                "its errors are printed above")
        print(f"built {output} in {time.perf_counter() - start:.1f} s")
        if ext.name == EXECUTOR_LIBRARY:
            return
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
            if ext.name not in self._build_info_paths:
                continue
            built_info = self._build_info_paths[ext.name]
            inplace_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            self.copy_file(built_info, os.path.join(inplace_dir, BUILD_INFO_FILE),
                           level=self.verbose)


setup(
    name="tftrt_lite",
    version=read_version(),
    description="TF-TRT's converter for TensorFlow 2.21, with fused GPU engines instead of TensorRT",
    packages=find_packages(include=["tftrt_lite*"]),
    ext_modules=[
        Extension(
            OP_LIBRARY,
            sources=sorted(set(glob.glob(os.path.join(CC_DIR, "*.cc"))) - {HARNESS_SOURCE}),
            depends=sorted(glob.glob(os.path.join(CC_DIR, "*.h"))),
            language="c++",
        ),
        Extension(
            EXECUTOR_LIBRARY,
            sources=EXECUTOR_SOURCES + [HARNESS_SOURCE],
            depends=sorted(glob.glob(os.path.join(CC_DIR, "*.h"))),
            language="c++",
        ),
    ],
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
