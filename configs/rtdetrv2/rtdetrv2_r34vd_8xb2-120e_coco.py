# RT-DETRv2 R34-vd (rtdetrv2_r34vd_120e_coco.yml): as R18 with 4 decoder layers, batch
# multi-scale until epoch 117, the backbone at half the learning rate, no weight decay on norms
# and on the encoder's and decoder's biases.
# Expected: 49.9 AP on val2017 (the original's README, RT-DETRv2-M*).
_base_ = './rtdetrv2_r18vd_8xb2-120e_coco.py'

model = dict(
    backbone=dict(depth=34, init_cfg=dict(checkpoint='presnet://resnet34vd')),
    decoder=dict(num_layers=4),
    # the original's collate scales (640 three times), nearest interpolation
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMultiScaleResize',
             sizes=[480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800])
    ]))

backbone_norm = dict(lr_mult=0.5, decay_mult=0.0)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone': dict(lr_mult=0.5),
    'backbone.stem.1.': backbone_norm, 'backbone.stem.4.': backbone_norm,
    'backbone.stem.7.': backbone_norm, '.downsample.2.': backbone_norm,
    '.bn1.weight': backbone_norm, '.bn1.bias': backbone_norm,
    '.bn2.weight': backbone_norm, '.bn2.bias': backbone_norm,
    'in_proj_bias': dict(decay_mult=0.0)}, bias_decay_mult=0.0))
