"""Installs detr_plugin; compiles the MSDA CUDA op into ``detr_plugin._ext`` when it can.

The extension is built when torch has CUDA and a CUDA toolkit is found (``CUDA_HOME``), or when
``FORCE_CUDA=1`` (e.g. to compile on a machine without a GPU). Otherwise it is skipped with one
line, and the pure PyTorch path of the op is used.
"""
import glob
import os

from setuptools import find_packages, setup


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


ext_modules, cmdclass = cuda_extensions()

setup(
    name='detr_plugin',
    version='0.1.0',
    description='DETR, Deformable DETR and RT-DETR for MMDetection 3.x',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    python_requires='>=3.8',
    install_requires=['numpy', 'scipy', 'pycocotools'],
    # tools/deployment/export_onnx.py
    extras_require={'onnx': ['onnx', 'onnxruntime']},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
