# RT-DETR with a ResNet-50-vd backbone (Zhao et al. 2024; rtdetr_pytorch's rtdetr_r50vd.yml).
# Inputs are RGB in [0, 1] without mean/std normalization, as in the original.
model = dict(
    _scope_='detr_plugin',  # our registries, also from mmdet's tools (DetInferencer)
    type='RTDETR',
    data_preprocessor=dict(
        type='DETRDataPreprocessor',  # the BGR -> RGB flip on the GPU, without a host wait
        mean=[0., 0., 0.],
        std=[255., 255., 255.],
        bgr_to_rgb=True,
        pad_size_divisor=32,
        # images and gts go to the GPU without the host waiting for each copy (same values)
        non_blocking=True),
    backbone=dict(
        type='ResNetVd',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),  # strides 8, 16, 32
        frozen_stages=0,  # the stem
        norm_cfg=dict(type='FrozenBatchNorm2d'),
        style='pytorch'),  # ImageNet weights: see configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py
    neck=dict(
        type='HybridEncoder',
        in_channels=[512, 1024, 2048],
        embed_dims=256,
        num_heads=8,
        ffn_dims=1024,
        dropout=0.0,
        enc_act='gelu',
        encoder_levels=[2],
        num_encoder_layers=1,
        pe_temperature=10000,
        expansion=1.0,
        depth_mult=1.0,
        act='silu'),
    decoder=dict(
        type='RTDETRDecoder',
        in_channels=[256, 256, 256],
        embed_dims=256,
        num_queries=300,
        num_layers=6,
        layer_cfg=dict(num_heads=8, num_levels=3, num_points=4, ffn_dims=1024, dropout=0.0,
                       act='relu')),
    denoising=dict(num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0),
    bbox_head=dict(
        type='RTDETRHead',
        num_classes=80,
        embed_dims=256,
        eval_idx=-1,
        loss_cls=dict(type='RTDETRVarifocalLoss', alpha=0.75, gamma=2.0, loss_weight=1.0),
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
    test_cfg=dict(max_per_img=300))
