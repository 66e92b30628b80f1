"""Installs detr_plugin; compiles the MSDA CUDA op into ``detr_plugin._ext`` when it can.

The extension is built when torch has CUDA and a CUDA toolkit is found (``CUDA_HOME``), or when
``FORCE_CUDA=1`` (e.g. to compile on a machine without a GPU). Otherwise it is skipped with one
line, and the pure PyTorch path of the op is used.

As mmdet does, ``configs/``, ``tools/`` and ``model-index.yml`` are shipped inside the package in
``detr_plugin/.mim/`` (copied for a wheel or sdist, linked for an editable install), so that an
installed package resolves ``_base_ = 'detr_plugin::_base_/default_runtime.py'`` and mim finds
its tools.
"""
import glob
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))
MIM_ENTRIES = ('configs', 'tools', 'model-index.yml')


def read_version_module() -> dict:
    """detr_plugin/version.py's names, without importing the package (it needs torch, mmdet)."""
    namespace = {}
    with open(osp.join(HERE, 'detr_plugin', 'version.py')) as f:
        exec(compile(f.read(), 'detr_plugin/version.py', 'exec'), namespace)
    return namespace


def add_mim_extension() -> None:
    """Puts configs/, tools/ and model-index.yml under detr_plugin/.mim/: links for an editable
    install, copies for a built package; nothing for other commands (egg_info, clean)."""
    if {'develop', 'editable_wheel'} & set(sys.argv):
        link = True
    elif {'bdist_wheel', 'sdist', 'install', 'build', 'build_py'} & set(sys.argv):
        link = False
    else:
        return
    mim = osp.join(HERE, 'detr_plugin', '.mim')
    os.makedirs(mim, exist_ok=True)
    for name in MIM_ENTRIES:
        source, target = osp.join(HERE, name), osp.join(mim, name)
        if osp.islink(target) or osp.isfile(target):
            os.remove(target)
        elif osp.isdir(target):
            shutil.rmtree(target)
        if link:
            os.symlink(osp.join('..', '..', name), target)
        elif osp.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(source, target)


def cuda_extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print('detr_plugin: torch is not installed; skipping the CUDA op (PyTorch path only)')
        return [], {}
    force = os.getenv('FORCE_CUDA', '0') == '1'
    if not ((torch.cuda.is_available() or force) and torch.version.cuda and CUDA_HOME):
        print('detr_plugin: no CUDA torch/toolkit; skipping the CUDA op (PyTorch path only)')
        return [], {}
    csrc = os.path.join('detr_plugin', 'ops', 'csrc')
    sources = sorted(glob.glob(os.path.join(csrc, '*.cpp')) + glob.glob(os.path.join(csrc, '*.cu')))
    if not sources:
        return [], {}
    ext = CUDAExtension(
        name='detr_plugin._ext',
        sources=sources,
        extra_compile_args={
            'cxx': ['-O3', '-std=c++20'],
            'nvcc': ['-O3', '-std=c++20', '-lineinfo',
                     '-U__CUDA_NO_HALF_OPERATORS__', '-U__CUDA_NO_HALF_CONVERSIONS__',
                     '-U__CUDA_NO_BFLOAT16_OPERATORS__', '-U__CUDA_NO_BFLOAT16_CONVERSIONS__'],
        })
    return [ext], {'build_ext': BuildExtension}


version = read_version_module()
add_mim_extension()
ext_modules, cmdclass = cuda_extensions()

setup(
    name='detr_plugin',
    version=version['__version__'],
    description='DETR, Deformable DETR and RT-DETR for MMDetection 3.x',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    include_package_data=True,  # detr_plugin/.mim and the op's sources, by MANIFEST.in
    python_requires='>=3.8',
    # torch >= 2.6: weights-only checkpoint loading by default and its allow-lists (tested with
    # 2.11-2.14); mmcv with its compiled ops: install it first (tools/setup_env.sh or mim), pip
    # cannot build it in an isolated environment
    install_requires=['torch>=2.6', 'numpy', 'scipy', 'pycocotools'] + [
        version['requirement'](*entry) for entry in version['MM_VERSION_RANGES']],
    # tools/deployment/export_onnx.py
    extras_require={'onnx': ['onnx', 'onnxruntime']},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
