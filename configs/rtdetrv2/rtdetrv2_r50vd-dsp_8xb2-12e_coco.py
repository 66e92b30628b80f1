# RT-DETRv2 R50-vd with discrete sampling (rtdetrv2_r50vd_dsp_1x_coco.yml): 12 epochs fine-tuning
# the R50-vd model (load_from) to nearest-cell sampling, strong augmentation stopped from epoch 10.
# Expected: 52.9 AP on val2017 (the original's README, RT-DETRv2-L_dsp).
_base_ = './rtdetrv2_r50vd_8xb2-72e_coco.py'

model = dict(decoder=dict(layer_cfg=dict(cross_attn_method='discrete')))

# the original fine-tunes its released rtdetrv2_r50vd_6x_coco_ema.pth: convert it (or train
# rtdetrv2_r50vd_8xb2-72e_coco.py) and point load_from at the result
load_from = 'checkpoints/rtdetrv2_r50vd_6x_coco_ema.pth'
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(stop_augmentation=dict(stop_epoch=10))
