# RT-DETR R18-vd (rtdetr_r18vd_6x_coco.yml): trainable backbone BatchNorm, CCFM at half width,
# 3 decoder layers. Expected: 46.5 AP on val2017 (paper, Table 2).
_base_ = './rtdetr_r50vd_8xb2-72e_coco.py'

model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict(checkpoint='presnet://resnet18vd')),
    neck=dict(in_channels=[128, 256, 512], expansion=0.5),
    decoder=dict(num_layers=3))

# trainable backbone BatchNorms: no weight decay, as the original's 'backbone' + 'norm' group (a
# custom key turns mmengine's norm rule off for the parameters it matches; these keys are longer
# than 'backbone', so they win)
backbone_norm = dict(lr_mult=0.1, decay_mult=0.0)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone.stem.1.': backbone_norm, 'backbone.stem.4.': backbone_norm,
    'backbone.stem.7.': backbone_norm, '.downsample.2.': backbone_norm,
    '.bn1.weight': backbone_norm, '.bn1.bias': backbone_norm,
    '.bn2.weight': backbone_norm, '.bn2.bias': backbone_norm}))
