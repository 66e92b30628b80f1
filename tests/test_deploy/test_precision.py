"""store_weights_for_autocast: under autocast, the detector with its convolution / linear /
attention weights stored in bfloat16 gives bitwise the outputs of the float32 detector under the
same autocast (autocast's own per-call casts are the reference), and only those weights change."""
import pathlib

import pytest
import torch
from mmengine.config import Config
from torch import nn

from detr_plugin.deploy import End2EndDetector, fuse_for_inference, store_weights_for_autocast
from detr_plugin.registry import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ['configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
           'configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py',
           'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py']


def fused_detector(config):
    cfg = Config.fromfile(str(ROOT / config)).model
    cfg.backbone.init_cfg = None
    if config.endswith('coco.py'):
        cfg.decoder.num_layers = 2
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return End2EndDetector(fuse_for_inference(model.eval()))


def under_bf16_autocast(net, images):
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, cache_enabled=False):
        return net(images)


@pytest.mark.parametrize('config', CONFIGS)
def test_stored_bf16_weights_give_bitwise_the_autocast_outputs(config):
    net = fused_detector(config)
    images = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    expected = under_bf16_autocast(net, images)
    store_weights_for_autocast(net, torch.bfloat16)
    got = under_bf16_autocast(net, images)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        assert torch.equal(g, e)


def test_only_convolution_linear_and_attention_weights_change():
    net = fused_detector(CONFIGS[0])
    before = {name: p.dtype for name, p in net.named_parameters()}
    store_weights_for_autocast(net, torch.bfloat16)
    for module_name, module in net.named_modules():
        for name, p in module.named_parameters(recurse=False):
            low = isinstance(module, (nn.Conv2d, nn.Linear)) or name.startswith('in_proj_')
            assert p.dtype == (torch.bfloat16 if low else torch.float32), (module_name, name)
    assert all(dtype == torch.float32 for dtype in before.values())
    assert any(isinstance(m, nn.LayerNorm) for m in net.modules())
    assert all(b.dtype in (torch.float32, torch.int64, torch.bool) for b in net.buffers())


def test_other_dtypes_are_refused():
    with pytest.raises(ValueError, match='dtype must be torch.bfloat16 or torch.float16'):
        store_weights_for_autocast(nn.Linear(2, 2), torch.float32)
