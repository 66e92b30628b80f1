# RT-DETRv2 R50-vd-m with discrete sampling (rtdetrv2_r50vd_m_dsp_3x_coco.yml): 36 epochs
# fine-tuning the R50-vd-m model (load_from), strong augmentation stopped from epoch 33.
# Expected: 51.4 AP on val2017 (the original's README, RT-DETRv2-M_dsp).
_base_ = './rtdetrv2_r50vd-m_8xb2-84e_coco.py'

model = dict(decoder=dict(layer_cfg=dict(cross_attn_method='discrete')))

# the original fine-tunes its released rtdetrv2_r50vd_m_7x_coco_ema.pth
load_from = 'checkpoints/rtdetrv2_r50vd_m_7x_coco_ema.pth'
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(stop_augmentation=dict(stop_epoch=33))
