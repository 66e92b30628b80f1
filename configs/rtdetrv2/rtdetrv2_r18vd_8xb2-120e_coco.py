# RT-DETRv2 R18-vd (rtdetrv2_r18vd_120e_coco.yml): trainable backbone BatchNorm, CCFM at half
# width, 3 decoder layers, 120 epochs at a fixed 640 x 640 (no batch multi-scale), the backbone at
# the full learning rate, strong augmentation stopped from epoch 117.
# Expected: 48.1 AP on val2017 (the original's README, RT-DETRv2-S).
_base_ = './rtdetrv2_r50vd_8xb2-72e_coco.py'

model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict(checkpoint='presnet://resnet18vd')),
    neck=dict(in_channels=[128, 256, 512], expansion=0.5),
    decoder=dict(num_layers=3),
    data_preprocessor=dict(batch_augments=None))

# one learning rate for all; no decay on any norm (backbone BatchNorms too: keys longer than
# 'backbone' win, see configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py)
backbone_norm = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone': dict(lr_mult=1.0),
    'backbone.stem.1.': backbone_norm, 'backbone.stem.4.': backbone_norm,
    'backbone.stem.7.': backbone_norm, '.downsample.2.': backbone_norm,
    '.bn1.weight': backbone_norm, '.bn1.bias': backbone_norm,
    '.bn2.weight': backbone_norm, '.bn2.bias': backbone_norm}))
max_epochs = 120
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(stop_augmentation=dict(stop_epoch=117))
