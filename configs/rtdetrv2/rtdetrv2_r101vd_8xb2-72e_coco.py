# RT-DETRv2 R101-vd (rtdetrv2_r101vd_6x_coco.yml): hybrid encoder 384 wide with FFN 2048, backbone
# learning rate 1e-6. Expected: 54.3 AP on val2017 (the original's README, RT-DETRv2-X).
_base_ = './rtdetrv2_r50vd_8xb2-72e_coco.py'

model = dict(
    backbone=dict(depth=101, init_cfg=dict(checkpoint='presnet://resnet101vd')),
    neck=dict(embed_dims=384, ffn_dims=2048),
    decoder=dict(in_channels=[384, 384, 384]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.01)}))
