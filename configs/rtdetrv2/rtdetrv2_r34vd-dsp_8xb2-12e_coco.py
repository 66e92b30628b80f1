# RT-DETRv2 R34-vd with discrete sampling (rtdetrv2_r34vd_dsp_1x_coco.yml): 12 epochs fine-tuning
# the R34-vd model (load_from), strong augmentation and multi-scale stopped from epoch 10.
# Expected: 49.2 AP on val2017 (the original's README, RT-DETRv2-M*_dsp).
_base_ = './rtdetrv2_r34vd_8xb2-120e_coco.py'

model = dict(decoder=dict(layer_cfg=dict(cross_attn_method='discrete')))

# the original fine-tunes its released rtdetrv2_r34vd_120e_coco_ema.pth
load_from = 'checkpoints/rtdetrv2_r34vd_120e_coco_ema.pth'
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(stop_augmentation=dict(stop_epoch=10))
