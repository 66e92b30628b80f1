# D-FINE-M (dfine_hgnetv2_m_coco.yml): D-FINE-S's recipe with HGNetv2-B2, the encoder at
# expansion 1.0 and depth 0.67, 4 decoder layers, the backbone at 2e-5 and 640 drawn 6 times in
# the multi-scale list.
# Expected: 52.3 AP on val2017 (the original's README, D-FINE-M).
_base_ = './dfine_hgnetv2-s_8xb4-132e_coco.py'

base_size_repeat = 6
model = dict(
    backbone=dict(arch='B2', init_cfg=dict(checkpoint='hgnetv2://B2')),
    neck=dict(in_channels=[384, 768, 1536], expansion=1.0, depth_mult=0.67),
    decoder=dict(num_layers=4),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMultiScaleResize',
             sizes=list(range(480, 640, 32)) + [640] * base_size_repeat +
             list(range(800, 640, -32)))
    ]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
