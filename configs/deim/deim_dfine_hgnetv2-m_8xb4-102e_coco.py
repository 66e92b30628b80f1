# DEIM-D-FINE-M (deim_hgnetv2_m_coco.yml): D-FINE-M's model (HGNetv2-B2, the encoder at depth
# 0.67, 4 decoder layers) with DEIM-D-FINE-S's settings and groups, the backbone at 4e-5.
# 102 epochs: flat to epoch 49, constant for the last 12; Dense O2O in epochs 4-48,
# photometric / zoom-out / IoU crop to 89, restart at 90; 640 drawn 6 times in the multi-scale
# list.
# Expected: 52.7 AP on val2017 (the original's README, DEIM-D-FINE-M).
_base_ = './deim_dfine_hgnetv2-s_8xb4-132e_coco.py'

base_size_repeat = 6
model = dict(
    backbone=dict(arch='B2', init_cfg=dict(checkpoint='hgnetv2://B2')),
    neck=dict(in_channels=[384, 768, 1536], expansion=1.0, depth_mult=0.67),
    decoder=dict(num_layers=4),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMixUp', prob=0.5, ratio_range=(0.45, 0.55)),
        dict(type='BatchMultiScaleResize',
             sizes=list(range(480, 640, 32)) + [640] * base_size_repeat +
             list(range(800, 640, -32)))
    ]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))

max_epochs = 102
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='FlatCosineLR', by_epoch=True, convert_to_iter_based=True, begin=0,
         end=max_epochs, warmup_iters=2000, flat_end=49, final_steps=12,
         lr_gamma=0.5, start_factor=1 / 500)
]
default_hooks = dict(
    augmentation_window=dict(
        windows=dict(Mosaic=(4, 49), BatchMixUp=(4, 49), PhotoMetricDistortion=(4, 90),
                     SkipAfterMosaic=(4, 90), BatchMultiScaleResize=(0, 90))),
    restart_from_best=dict(epoch=90))
