# D-FINE-L (Peng et al., ICLR 2025; Peterande/D-FINE configs/dfine/dfine_hgnetv2_l_coco.yml over
# include/{dataloader,optimizer,dfine_hgnetv2}.yml): the COCO recipe of every D-FINE size; the
# other sizes' configs inherit this one and state what differs.
# Expected: 54.0 AP on val2017 (the original's README, D-FINE-L).
#
# 80 epochs at a total batch of 32; RT-DETR's augmentation (photometric distortion, zoom-out, IoU
# crop, flip, 640 x 640) and batch multi-scale (one side per batch from 480-800 with 640 drawn
# base_size_repeat times) until epoch 72, then plain flip and resize; at epoch 72 model, EMA and
# optimizer restart from the best checkpoint so far (the original's best_stg1.pth). AdamW 2.5e-4,
# the backbone at 1.25e-5, weight decay 1.25e-4 except on the encoder's and decoder's norms;
# gradient clip 0.1; a linear warm-up over 500 iterations, then a constant rate; EMA 0.9999 with
# 1000 warm-up updates.
#
# Not reproduced: after epoch 72 the original's solver also reloads best_stg1.pth after every
# epoch that does not improve on the best (RestartFromBestHook restarts once), and sets an EMA
# decay there that its update never reads.
#
# The original trains in mixed precision (use_amp: True, float16 autocast): add --amp to
# tools/train.py (bfloat16 where the GPU has it; the losses are computed in float32 either way).
#
# The backbone starts from the authors' HGNetv2 ImageNet weights (hgnetv2://B4, downloaded once).
_base_ = [
    '../_base_/models/dfine_hgnetv2.py', '../_base_/datasets/coco_detection_rtdetr.py',
    '../_base_/default_runtime.py'
]

# multi-scale: 480-608 and 800-672 in steps of 32, and 640 base_size_repeat times (generate_scales)
base_size_repeat = 4
model = dict(
    sync_bn=True,  # the original's sync_bn (BatchNorm over the global batch)
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='hgnetv2://B4')),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMultiScaleResize',
             sizes=list(range(480, 640, 32)) + [640] * base_size_repeat +
             list(range(800, 640, -32)))
    ]))

train_dataloader = dict(batch_size=4)  # 32 images on 8 GPUs

optim_wrapper = dict(
    type='OptimWrapper',
    # one parameter group per distinct setting; same update as one group per tensor
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel per group updates every tensor (and, under AMP, skips a step with
    # non-finite gradients on the GPU, where the unfused update reads the check on the host)
    optimizer=dict(type='AdamW', fused=True, lr=2.5e-4, betas=(0.9, 0.999), weight_decay=1.25e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        # the original's groups: '^(?=.*backbone)(?!.*norm|bn).*$' at 1.25e-5 (the whole
        # trainable backbone: its norms are frozen) and '^(?=.*(?:encoder|decoder))
        # (?=.*(?:norm|bn)).*$' without decay; every module of ours named so is a norm layer
        # (tests/test_runtime/test_dfine_deim_configs.py checks each tensor against the regexes)
        custom_keys={'backbone': dict(lr_mult=0.05)},
        norm_decay_mult=0.0))

max_epochs = 80
stop_epoch = 72
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# iteration k (0-based) at min(1, (k + 1) / 500) of the learning rate (LinearWarmup); the
# original's MultiStepLR milestone (epoch 500) is never reached
param_scheduler = [
    dict(type='LinearLR', start_factor=1 / 500, by_epoch=False, begin=0, end=500)
]

# named default hooks, so that the other sizes change only their epochs
default_hooks = dict(
    checkpoint=dict(save_best='coco/bbox_mAP', rule='greater'),
    # the original's stop_epoch policy and its collate function's stop_epoch
    augmentation_window=dict(
        type='AugmentationWindowHook',
        windows=dict(PhotoMetricDistortion=(0, stop_epoch), Expand=(0, stop_epoch),
                     RandomIoUCrop=(0, stop_epoch), BatchMultiScaleResize=(0, stop_epoch))),
    restart_from_best=dict(type='RestartFromBestHook', epoch=stop_epoch))

custom_hooks = [
    dict(type='NumClassesCheckHook'),
    dict(type='RNGStateHook'),
    dict(type='CPUAffinityHook'),
    # the original's ModelEMA: decay 0.9999 * (1 - exp(-updates / 1000)), buffers included
    dict(type='EMAHook', ema_type='ForeachExpMomentumEMA', momentum=0.0001, gamma=1000,
         update_buffers=True, priority=49)
]
auto_scale_lr = dict(base_batch_size=32)
