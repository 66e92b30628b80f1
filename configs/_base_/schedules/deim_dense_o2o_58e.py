# DEIM's schedule for its L and X models (deim_hgnetv2_{l,x}_coco.yml over deim.yml), with the
# default runtime: 58 epochs at a total batch of 32; AdamW 5e-4, weight decay 1.25e-4, gradient
# clip 0.1 (parameter groups: the model config's); EMA 0.9999 with 1000 warm-up updates.
#
# Learning rate (FlatCosineLR): quadratic warm-up over 2000 iterations, flat to epoch 29, cosine
# down to 0.5x until epoch 50, constant for the last 8 epochs.
# Augmentations by epoch (AugmentationWindowHook; DEIM's policy.epoch [4, 29, 50], mixup_epochs
# [4, 29] and the collate function's stop_epoch 50), for the pipeline of
# configs/_base_/datasets/coco_detection_dense_o2o.py:
#   epochs 0-3    flip and resize only, batch multi-scale
#   epochs 4-28   Dense O2O: Mosaic or zoom-out + IoU crop, photometric, MixUp, multi-scale
#   epochs 29-49  photometric, zoom-out, IoU crop, multi-scale
#   epochs 50-57  flip and resize only
# The other sizes (DEIM's YAML): S 132 epochs, flat_end 64, final_steps 12, windows 4/64/120
# (restart at 120); M 102, 49, 12, 4/49/90; N 160, flat past the end (flat_end 7800) with
# lr_gamma 1.0, final_steps 12, windows 4/78/148 and no multi-scale (drop its window with
# _delete_).
#
# It includes the default runtime; a DEIM config combines it with a model and the Dense O2O data:
#   _base_ = ['../_base_/models/dfine_hgnetv2.py', '../_base_/datasets/coco_detection_dense_o2o.py',
#             '../_base_/schedules/deim_dense_o2o_58e.py']
#   model = dict(data_preprocessor=dict(batch_augments={{_base_.dense_o2o_batch_augments}}))
_base_ = '../default_runtime.py'

max_epochs = 58
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    # one parameter group per distinct setting (fewer optimizer kernel launches than mmengine's
    # default of one group per tensor); same update
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel per group updates every tensor (and, under AMP, skips a step with
    # non-finite gradients on the GPU, where the unfused update reads the check on the host)
    optimizer=dict(type='AdamW', fused=True, lr=5e-4, betas=(0.9, 0.999), weight_decay=1.25e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2))
# iteration k trains at f(k - 1) of DEIM's flat_cosine_schedule (it sets the rate after each
# step); iteration 0 at 1/500, where DEIM's unused LinearWarmup(500) leaves the optimizer
param_scheduler = [
    dict(type='FlatCosineLR', by_epoch=True, convert_to_iter_based=True, begin=0,
         end=max_epochs, warmup_iters=2000, flat_end=29, final_steps=8, lr_gamma=0.5,
         start_factor=1 / 500)
]

# named default hooks, so that the other sizes change only their epochs. At epoch 50 (DEIM's
# stop_epoch) the model, EMA and optimizer restart from the best checkpoint so far, as DEIM's
# solver reloads best_stg1.pth (its 'EMA refresh'; the decay it also sets there is not used).
default_hooks = dict(
    checkpoint=dict(save_best='coco/bbox_mAP', rule='greater'),
    augmentation_window=dict(
        type='AugmentationWindowHook',
        windows=dict(Mosaic=(4, 29), BatchMixUp=(4, 29), PhotoMetricDistortion=(4, 50),
                     SkipAfterMosaic=(4, 50), BatchMultiScaleResize=(0, 50))),
    restart_from_best=dict(type='RestartFromBestHook', epoch=50))

custom_hooks = [
    dict(type='NumClassesCheckHook'),
    dict(type='RNGStateHook'),
    dict(type='CPUAffinityHook'),
    # DEIM's ModelEMA: decay 0.9999 * (1 - exp(-updates / 1000)), buffers included
    dict(type='EMAHook', ema_type='ForeachExpMomentumEMA', momentum=0.0001, gamma=1000,
         update_buffers=True, priority=49)
]
auto_scale_lr = dict(base_batch_size=32)
