# DEIM-D-FINE-S (deim_hgnetv2_s_coco.yml): D-FINE-S's model (HGNetv2-B0 with learnable affine, 3
# decoder layers) with DEIM-D-FINE-L's settings. 132 epochs: FlatCosineLR flat to epoch 64,
# constant for the last 12; Dense O2O in epochs 4-63, photometric / zoom-out / IoU crop to 119,
# restart from the best checkpoint at 120; 640 drawn 20 times in the multi-scale list.
# AdamW 4e-4, weight decay 1e-4; the original's groups: '^(?=.*backbone)(?!.*bn).*$' at 2e-4 and
# '^(?=.*(?:norm|bn)).*$' without decay, so the backbone's BatchNorms (named bn) train at 4e-4.
# Expected: 49.0 AP on val2017 (the original's README, DEIM-D-FINE-S).
_base_ = './deim_dfine_hgnetv2-l_8xb4-58e_coco.py'

base_size_repeat = 20
model = dict(
    backbone=dict(arch='B0', use_lab=True, init_cfg=dict(checkpoint='hgnetv2://B0')),
    neck=dict(in_channels=[256, 512, 1024], expansion=0.5, depth_mult=0.34),
    decoder=dict(num_layers=3),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMixUp', prob=0.5, ratio_range=(0.45, 0.55)),
        dict(type='BatchMultiScaleResize',
             sizes=list(range(480, 640, 32)) + [640] * base_size_repeat +
             list(range(800, 640, -32)))
    ]))

# keys of equal length win in alphabetical order, so '.bn.bias' comes before 'backbone'
backbone_bn = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    optimizer=dict(lr=4e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5), '.bn.weight': backbone_bn,
                                    '.bn.bias': backbone_bn}))

max_epochs = 132
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='FlatCosineLR', by_epoch=True, convert_to_iter_based=True, begin=0,
         end=max_epochs, warmup_iters=2000, flat_end=64, final_steps=12,
         lr_gamma=0.5, start_factor=1 / 500)
]
default_hooks = dict(
    augmentation_window=dict(
        windows=dict(Mosaic=(4, 64), BatchMixUp=(4, 64), PhotoMetricDistortion=(4, 120),
                     SkipAfterMosaic=(4, 120), BatchMultiScaleResize=(0, 120))),
    restart_from_best=dict(epoch=120))
