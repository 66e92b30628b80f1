# D-FINE-X (dfine_hgnetv2_x_coco.yml): D-FINE-L's recipe with HGNetv2-B5, the encoder 384 wide
# (feed-forward 2048; the decoder stays 256 wide and projects its levels), reg_scale 8, the
# backbone at 2.5e-6 and 640 drawn 3 times in the multi-scale list.
# Expected: 55.8 AP on val2017 (the original's README, D-FINE-X).
_base_ = './dfine_hgnetv2-l_8xb4-80e_coco.py'

base_size_repeat = 3
model = dict(
    backbone=dict(arch='B5', init_cfg=dict(checkpoint='hgnetv2://B5')),
    neck=dict(embed_dims=384, ffn_dims=2048),
    decoder=dict(in_channels=[384, 384, 384]),
    bbox_head=dict(reg_scale=8.0),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMultiScaleResize',
             sizes=list(range(480, 640, 32)) + [640] * base_size_repeat +
             list(range(800, 640, -32)))
    ]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.01)}))
