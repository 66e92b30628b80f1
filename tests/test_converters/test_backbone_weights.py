"""ImageNet backbone weights without torchvision: the COCO configs name a URL (DETR, Deformable
DETR) or presnet:// (RT-DETR), and presnet:// gives our ResNetVd the authors' PResNet weights."""
import pathlib

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import CheckpointLoader

from detr_plugin.converters import PRESNET_URLS, CheckpointError

ROOT = pathlib.Path(__file__).resolve().parents[2]
TORCHVISION_URLS = {50: 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
                    101: 'https://download.pytorch.org/models/resnet101-63fe2227.pth'}


@pytest.mark.parametrize('name', sorted(p.name for p in ROOT.glob('configs/*/*_coco.py')))
def test_coco_configs_need_neither_torchvision_nor_a_local_file(name):
    path, = ROOT.glob(f'configs/*/{name}')
    backbone = Config.fromfile(str(path)).model.backbone
    checkpoint = backbone.init_cfg.checkpoint
    assert backbone.init_cfg.type == 'Pretrained'
    if backbone.type == 'ResNetVd':
        assert checkpoint == f'presnet://resnet{backbone.depth}vd'
    elif backbone.type == 'HGNetv2':
        assert checkpoint == f'hgnetv2://{backbone.arch}'
    else:
        assert checkpoint == TORCHVISION_URLS[backbone.depth]


def presnet18_original():
    """The key names and shapes of the original PResNet-18 (variant d: a 3-conv stem, basic
    blocks, an average-pool + 1x1 conv shortcut where a stage halves the resolution), random."""
    state = {}

    def conv_norm(prefix, c_in, c_out, k):
        state[f'{prefix}.conv.weight'] = torch.randn(c_out, c_in, k, k)
        for name in ('weight', 'bias', 'running_mean'):
            state[f'{prefix}.norm.{name}'] = torch.randn(c_out)
        state[f'{prefix}.norm.running_var'] = torch.rand(c_out) + 0.5

    for name, c_in, c_out in (('conv1_1', 3, 32), ('conv1_2', 32, 32), ('conv1_3', 32, 64)):
        conv_norm(f'conv1.{name}', c_in, c_out, 3)
    c_in = 64
    for stage, c_out in enumerate((64, 128, 256, 512)):
        for block in range(2):
            prefix = f'res_layers.{stage}.blocks.{block}'
            conv_norm(f'{prefix}.branch2a', c_in if block == 0 else c_out, c_out, 3)
            conv_norm(f'{prefix}.branch2b', c_out, c_out, 3)
            if block == 0 and stage > 0:
                conv_norm(f'{prefix}.short.conv', c_in, c_out, 1)
            elif block == 0:
                conv_norm(f'{prefix}.short', c_in, c_out, 1)
        c_in = c_out
    return state


def test_presnet_scheme_gives_our_backbone_its_imagenet_weights(tmp_path, monkeypatch):
    """The RT-DETR R18 COCO config's backbone initialised through presnet://resnet18vd, which
    downloads the authors' file (here a file:// URL, into a fresh torch.hub directory) and converts
    it: every tensor of the backbone comes from the file."""
    from detr_plugin.registry import MODELS
    original = presnet18_original()
    src = tmp_path / 'ResNet18_vd_pretrained_from_paddle.pth'
    torch.save(original, src)
    monkeypatch.setitem(PRESNET_URLS, 'resnet18vd', src.as_uri())
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    weights = CheckpointLoader.load_checkpoint('presnet://resnet18vd')
    assert (tmp_path / 'hub' / 'checkpoints' / src.name).is_file()

    cfg = Config.fromfile(str(ROOT / 'configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py'))
    backbone = MODELS.build(cfg.model.backbone)
    backbone.load_state_dict(weights, strict=True)  # names and shapes: all of them, no more
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()  # what the Runner does
    torch.testing.assert_close(backbone.stem[6].weight, original['conv1.conv1_3.conv.weight'])
    torch.testing.assert_close(backbone.layer3[0].downsample[1].weight,
                               original['res_layers.2.blocks.0.short.conv.conv.weight'])
    torch.testing.assert_close(backbone.layer1[0].downsample[2].bias,
                               original['res_layers.0.blocks.0.short.norm.bias'])
    torch.testing.assert_close(backbone.layer1[1].bn2.running_var,
                               original['res_layers.0.blocks.1.branch2b.norm.running_var'])
    with pytest.raises(CheckpointError, match='unknown PResNet'):
        CheckpointLoader.load_checkpoint('presnet://resnet42')


def test_presnet_download_failure_is_one_line(tmp_path, monkeypatch):
    url = (tmp_path / 'ResNet34_vd_pretrained_from_paddle.pth').as_uri()  # no such file
    monkeypatch.setitem(PRESNET_URLS, 'resnet34vd', url)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(CheckpointError) as error:
        CheckpointLoader.load_checkpoint('presnet://resnet34vd')
    message = str(error.value)
    assert message.startswith(f'cannot download {url}') and '\n' not in message
    assert message.endswith(f'copy that file to {tmp_path}/hub/checkpoints/'
                            'ResNet34_vd_pretrained_from_paddle.pth')
