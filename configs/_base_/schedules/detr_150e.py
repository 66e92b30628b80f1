# The DETR paper's optimisation: AdamW 1e-4 (backbone 1e-5), weight decay 1e-4, gradient clip
# 0.1, lr x0.1 at epoch 100 of 150.
optim_wrapper = dict(
    type='OptimWrapper',
    # one parameter group per distinct setting (fewer optimizer kernel launches than mmengine's
    # default of one group per tensor); same update
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel per group updates every tensor (and, under AMP, skips a step with
    # non-finite gradients on the GPU, where the unfused update reads the check on the host)
    optimizer=dict(type='AdamW', fused=True, lr=1e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1, decay_mult=1.0)}))

max_epochs = 150
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[100], gamma=0.1)
]

# the recipe's lr is for a total batch of 16 (8 GPUs x 2 images); --auto-scale-lr rescales it
auto_scale_lr = dict(base_batch_size=16)
