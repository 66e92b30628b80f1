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
