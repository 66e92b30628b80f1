# RT-DETRv2 R50-vd (Lv et al. 2024; rtdetrv2_pytorch's rtdetrv2_r50vd_6x_coco.yml): RT-DETR with
# the v2 decoder and recipe. Expected: 53.4 AP on val2017 (the original's README, RT-DETRv2-L).
#
# Decoder: deformable cross-attention with a sampling-point count per level (layer_cfg.num_points,
# here [4, 4, 4]) and optionally discrete sampling (cross_attn_method='discrete', the *-dsp
# configs). Recipe: from epoch 71 (0-based) training runs without the photometric distortion,
# zoom-out and IoU crop and without batch multi-scale (StopAugmentationHook, the original's
# stop_epoch policy); AdamW without weight decay on norms (biases decay, unlike v1); a linear
# learning-rate warm-up over the first 2000 iterations (the original's LinearWarmup).
_base_ = '../rtdetr/rtdetr_r50vd_8xb2-72e_coco.py'

model = dict(
    decoder=dict(layer_cfg=dict(num_points=[4, 4, 4], cross_attn_method='default')))

# v2's regex groups: no decay on what is named norm or bn (v2 names every norm layer so)
optim_wrapper = dict(paramwise_cfg=dict(
    custom_keys=dict(_delete_=True, backbone=dict(lr_mult=0.1)), bias_decay_mult=None))
# iteration k (0-based) at min(1, (k + 1) / 2000) of the learning rate, as LinearWarmup
param_scheduler = [
    dict(type='LinearLR', start_factor=1 / 2000, by_epoch=False, begin=0, end=2000)
]

# a named default hook, so that variants change only its stop_epoch
default_hooks = dict(stop_augmentation=dict(type='StopAugmentationHook', stop_epoch=71))
