# Deformable DETR with a ResNet-50 backbone (Zhu et al. 2021): C3-C5 + a stride-64 level from C5,
# 6+6 deformable layers (8 heads, 4 levels, 4 points), width 256, 300 queries, focal loss.
model = dict(
    _scope_='detr_plugin',  # our registries, also from mmdet's tools (DetInferencer)
    type='DeformableDETR',
    num_queries=300,
    num_feature_levels=4,
    with_box_refine=False,
    as_two_stage=False,
    data_preprocessor=dict(
        type='DETRDataPreprocessor',  # the BGR -> RGB flip on the GPU, without a host wait
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1,
        # images and gts go to the GPU without the host waiting for each copy (same values)
        non_blocking=True),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        # torchvision's ImageNet weights (what torchvision://resnet50 gives), downloaded on first
        # use into torch.hub's cache, without torchvision
        init_cfg=dict(type='Pretrained',
                      checkpoint='https://download.pytorch.org/models/resnet50-0676ba61.pth')),
    # every level: conv (with bias) + GroupNorm(32); the 4th level: 3x3 stride-2 conv on C5 itself
    neck=dict(
        type='ChannelMapper',
        in_channels=[512, 1024, 2048],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        bias=True,
        num_outs=4),
    positional_encoding=dict(type='SinePositionalEncoding', num_feats=128, normalize=True,
                             offset=-0.5),
    encoder=dict(
        type='DeformableDetrTransformerEncoder',
        num_layers=6,
        layer_cfg=dict(embed_dims=256, num_heads=8, num_levels=4, num_points=4, ffn_dims=1024,
                       dropout=0.1)),
    decoder=dict(
        type='DeformableDetrTransformerDecoder',
        num_layers=6,
        layer_cfg=dict(embed_dims=256, num_heads=8, num_levels=4, num_points=4, ffn_dims=1024,
                       dropout=0.1)),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=80,
        embed_dims=256,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0, alpha=0.25, gamma=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=100))
