# A small DETR trained from scratch on the generated demo data (tools/misc/make_demo_dataset.py):
# the README's main job, a few minutes on 2 CPU cores. Same architecture as the paper's, smaller:
# ResNet-18 to stride 16 with trainable BatchNorm (no pretrained weights), width 128, 3+3 layers.
_base_ = [
    '../_base_/models/detr_r50.py', '../_base_/datasets/demo_detection.py',
    '../_base_/schedules/detr_150e.py', '../_base_/default_runtime.py'
]

embed_dims = 128
layer_cfg = dict(embed_dims=embed_dims, num_heads=8, ffn_dims=512, dropout=0.0)
model = dict(
    num_queries=20,
    backbone=dict(
        depth=18,
        num_stages=3,
        strides=(1, 2, 2),
        dilations=(1, 1, 1),
        out_indices=(2, ),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[256], out_channels=embed_dims),
    positional_encoding=dict(num_feats=embed_dims // 2),
    encoder=dict(num_layers=3, layer_cfg=layer_cfg),
    decoder=dict(num_layers=3, layer_cfg=layer_cfg),
    bbox_head=dict(num_classes=3, embed_dims=embed_dims),
    test_cfg=dict(max_per_img=20))

optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[25], gamma=0.1)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=10, max_keep_ckpts=1))
auto_scale_lr = dict(base_batch_size=8)
