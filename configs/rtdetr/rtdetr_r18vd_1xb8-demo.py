# A small RT-DETR trained from scratch on the generated demo data (tools/misc/make_demo_dataset.py):
# the README's main job (tools/run_demo.sh). Same architecture as the paper's R18 model, narrower:
# ResNet-18-vd (strides 8/16/32, trainable BatchNorm, no pretrained weights), width 128, 3 decoder
# layers, 30 queries, 30 denoising queries. Measured (data/demo, seed 0, 2 CPU cores):
# 15 epochs (this config): 0.713 bbox mAP (untrained 0.000), 517 s of training, 633 s for the
# whole tools/run_demo.sh from a fresh clone on an idle machine; 30 epochs: 0.801.
_base_ = [
    '../_base_/models/rtdetr_r50vd.py', '../_base_/datasets/demo_detection.py',
    '../_base_/default_runtime.py'
]

embed_dims = 128
model = dict(
    sync_bn=True,  # global-batch BatchNorm when trained on several processes, as the COCO recipe
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False),
    neck=dict(in_channels=[128, 256, 512], embed_dims=embed_dims, ffn_dims=512, expansion=0.5),
    decoder=dict(
        in_channels=[embed_dims] * 3,
        embed_dims=embed_dims,
        num_queries=30,
        num_layers=3,
        layer_cfg=dict(ffn_dims=512)),
    denoising=dict(num_denoising=30),
    bbox_head=dict(num_classes=3, embed_dims=embed_dims),
    test_cfg=dict(max_per_img=30))

optim_wrapper = dict(
    type='OptimWrapper',
    # one parameter group per distinct setting (fewer optimizer kernel launches than mmengine's
    # default of one group per tensor); same update
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel per group updates every tensor (and, under AMP, skips a step with
    # non-finite gradients on the GPU, where the unfused update reads the check on the host)
    optimizer=dict(type='AdamW', fused=True, lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))

max_epochs = 15
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[13], gamma=0.1)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=5, max_keep_ckpts=1))
auto_scale_lr = dict(base_batch_size=8)
