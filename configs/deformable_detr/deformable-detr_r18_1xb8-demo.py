# A small Deformable DETR trained from scratch on the generated demo data
# (tools/misc/make_demo_dataset.py), a few minutes on 2 CPU cores. The paper's architecture, smaller:
# ResNet-18 C3-C5 (3 levels, no extra level) with trainable BatchNorm and no pretrained weights,
# width 128, 3+3 layers, 30 queries. Variants: add model=dict(with_box_refine=True) and/or
# as_two_stage=True (e.g. --cfg-options model.with_box_refine=True model.as_two_stage=True).
_base_ = [
    '../_base_/models/deformable_detr_r50.py', '../_base_/datasets/demo_detection.py',
    '../_base_/schedules/deformable_detr_50e.py', '../_base_/default_runtime.py'
]

embed_dims = 128
num_levels = 3
layer_cfg = dict(embed_dims=embed_dims, num_heads=8, num_levels=num_levels, num_points=4,
                 ffn_dims=512, dropout=0.0)
model = dict(
    num_queries=30,
    num_feature_levels=num_levels,
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[128, 256, 512], out_channels=embed_dims, num_outs=num_levels),
    positional_encoding=dict(num_feats=embed_dims // 2),
    encoder=dict(num_layers=3, layer_cfg=layer_cfg),
    decoder=dict(num_layers=3, layer_cfg=layer_cfg),
    bbox_head=dict(num_classes=3, embed_dims=embed_dims),
    test_cfg=dict(max_per_img=30))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[25], gamma=0.1)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=10, max_keep_ckpts=1))
auto_scale_lr = dict(base_batch_size=8)
