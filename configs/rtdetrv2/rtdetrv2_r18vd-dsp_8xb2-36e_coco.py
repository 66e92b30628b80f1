# RT-DETRv2 R18-vd with discrete sampling (rtdetrv2_r18vd_dsp_3x_coco.yml): 36 epochs fine-tuning
# the R18-vd model (load_from) to nearest-cell sampling, strong augmentation stopped from epoch 33.
# Expected: 47.4 AP on val2017 (the original's README, RT-DETRv2-S_dsp).
_base_ = './rtdetrv2_r18vd_8xb2-120e_coco.py'

model = dict(decoder=dict(layer_cfg=dict(cross_attn_method='discrete')))

# the original fine-tunes its released rtdetrv2_r18vd_120e_coco.pth: convert it (or train
# rtdetrv2_r18vd_8xb2-120e_coco.py) and point load_from at the result
load_from = 'checkpoints/rtdetrv2_r18vd_120e_coco.pth'
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(stop_augmentation=dict(stop_epoch=33))
