"""fuse_for_inference keeps every detector's outputs (float64, so that the comparison is not
blurred by rounding) while removing every BatchNorm and RepVGG block."""
import pathlib

import pytest
import torch
from mmengine.config import Config
from torch import nn

from detr_plugin.deploy import fuse_for_inference
from detr_plugin.models.layers.csp_rep_layer import RepVggBlock
from detr_plugin.models.layers.frozen_batch_norm import FrozenBatchNorm2d
from detr_plugin.registry import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ['configs/rtdetr/rtdetr_r18vd_1xb8-demo.py', 'configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py',
           'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py', 'configs/detr/detr_r18_1xb8-demo.py']


@torch.no_grad()
def randomize_norms(model, generator):
    """Non-trivial statistics and affine parameters, so that folding them is tested."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.mark.parametrize('config', CONFIGS)
def test_fused_model_gives_the_same_outputs(config):
    cfg = Config.fromfile(str(ROOT / config)).model
    cfg.backbone.init_cfg = None
    if config.endswith('coco.py'):
        cfg.decoder.num_layers = 2  # keep it quick; the backbone and encoder are what is fused
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    randomize_norms(model, torch.Generator().manual_seed(1))
    model = model.double().eval()
    images = torch.randn(1, 3, 160, 192, dtype=torch.float64)
    with torch.no_grad():
        expected = model._forward(images)
        fuse_for_inference(model)
        fused = model._forward(images)
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d, RepVggBlock))
                   for m in model.modules())
    for e, f in zip(expected, fused):
        torch.testing.assert_close(f, e, rtol=1e-9, atol=1e-9)
