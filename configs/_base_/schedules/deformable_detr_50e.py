# The Deformable DETR paper's optimisation: AdamW 2e-4, weight decay 1e-4, gradient clip 0.1;
# backbone and the layers predicting sampling locations (offsets, reference points) at 0.1x;
# lr x0.1 at epoch 40 of 50.
optim_wrapper = dict(
    type='OptimWrapper',
    # one parameter group per distinct setting (fewer optimizer kernel launches than mmengine's
    # default of one group per tensor); same update
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel per group updates every tensor (and, under AMP, skips a step with
    # non-finite gradients on the GPU, where the unfused update reads the check on the host)
    optimizer=dict(type='AdamW', fused=True, lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1)
        }))

max_epochs = 50
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[40], gamma=0.1)
]

# the recipe's lr is for a total batch of 32 (16 GPUs x 2 images); --auto-scale-lr rescales it
auto_scale_lr = dict(base_batch_size=32)
