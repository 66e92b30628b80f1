# DETR with a ResNet-50 backbone (Carion et al. 2020): 6+6 layers, width 256, 100 queries.
model = dict(
    _scope_='detr_plugin',  # our registries, also from mmdet's tools (DetInferencer)
    type='DETR',
    num_queries=100,
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
        out_indices=(3, ),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        # torchvision's ImageNet weights (what torchvision://resnet50 gives), downloaded on first
        # use into torch.hub's cache, without torchvision
        init_cfg=dict(type='Pretrained',
                      checkpoint='https://download.pytorch.org/models/resnet50-0676ba61.pth')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[2048],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=None,
        num_outs=1),
    positional_encoding=dict(type='SinePositionalEncoding', num_feats=128, normalize=True),
    encoder=dict(
        type='DetrTransformerEncoder',
        num_layers=6,
        layer_cfg=dict(embed_dims=256, num_heads=8, ffn_dims=2048, dropout=0.1, pre_norm=False)),
    decoder=dict(
        type='DetrTransformerDecoder',
        num_layers=6,
        layer_cfg=dict(embed_dims=256, num_heads=8, ffn_dims=2048, dropout=0.1, pre_norm=False)),
    bbox_head=dict(
        type='DETRHead',
        num_classes=80,
        embed_dims=256,
        no_object_weight=0.1,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='ClassificationCost', weight=1.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=100))
