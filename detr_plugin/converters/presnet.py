"""``presnet://resnet{18,34,50,101}vd``: the RT-DETR authors' ImageNet PResNet weights, downloaded
once and converted to our ``ResNetVd`` names when a config's backbone asks for them.

    backbone=dict(type='ResNetVd', depth=50,
                  init_cfg=dict(type='Pretrained', checkpoint='presnet://resnet50vd'))

mmengine resolves the scheme like its own ``torchvision://``. The files are PaddleClas's
ResNet-vd weights converted by the authors (lyuwenyu/RT-DETR, rtdetr_pytorch/src/nn/backbone/
presnet.py); they are cached in torch.hub's directory (``$TORCH_HOME/hub/checkpoints``), where a
machine without internet access can be given them by hand.
"""
import os
import os.path as osp
from typing import Dict
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.runner import CheckpointLoader
from torch import Tensor

from ..utils.checkpoint_loading import CheckpointError, read_checkpoint
from .rtdetr import convert_rtdetr

SCHEME = 'presnet://'
_RELEASE = 'https://github.com/lyuwenyu/storage/releases/download/v0.1/'
PRESNET_URLS = {
    'resnet18vd': _RELEASE + 'ResNet18_vd_pretrained_from_paddle.pth',
    'resnet34vd': _RELEASE + 'ResNet34_vd_pretrained_from_paddle.pth',
    'resnet50vd': _RELEASE + 'ResNet50_vd_ssld_v2_pretrained_from_paddle.pth',
    'resnet101vd': _RELEASE + 'ResNet101_vd_ssld_pretrained_from_paddle.pth',
}


def _download(url: str) -> str:
    """The cached copy of ``url`` (rank 0 downloads it; the other ranks wait)."""
    path = osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))
    rank, _ = get_dist_info()
    if rank == 0 and not osp.isfile(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, progress=False)
        except OSError as error:  # URLError and HTTPError are OSErrors
            raise CheckpointError(f'cannot download {url} ({error}); without internet access, '
                                  f'copy that file to {path}') from None
    barrier()
    return path


def load_from_presnet(filename: str, map_location=None) -> Dict[str, Tensor]:
    """``presnet://resnetNvd`` -> the ImageNet weights with our ``ResNetVd`` names (no prefix), on
    the CPU. (mmengine logs the loader's name after ``load_from_`` as the backend.)"""
    name = filename[len(SCHEME):]
    if name not in PRESNET_URLS:
        raise CheckpointError(f'{filename!r}: unknown PResNet; one of '
                              + ', '.join(SCHEME + n for n in PRESNET_URLS))
    state_dict = convert_rtdetr(read_checkpoint(_download(PRESNET_URLS[name])))
    return {key[len('backbone.'):]: value for key, value in state_dict.items()}


CheckpointLoader.register_scheme(SCHEME, load_from_presnet)
