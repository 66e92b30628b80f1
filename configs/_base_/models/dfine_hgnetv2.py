# D-FINE-L (Peng et al., ICLR 2025; Peterande/D-FINE configs/dfine/include/dfine_hgnetv2.yml with
# dfine_hgnetv2_l_coco.yml's backbone): HGNetv2-B4 (stem frozen, frozen norms), D-FINE's hybrid
# encoder, 6 decoder layers with [3, 6, 3] sampling points, 32-bin edge distributions.
# Inputs are RGB in [0, 1] without mean/std normalization, as in the original.
# Other sizes (dfine_hgnetv2_{n,s,m,x}_coco.yml) override the backbone, the encoder width/depth and
# the decoder's layers.
model = dict(
    _scope_='detr_plugin',
    type='RTDETR',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[0., 0., 0.],
        std=[255., 255., 255.],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='HGNetv2',
        arch='B4',
        out_indices=(1, 2, 3),  # strides 8, 16, 32
        use_lab=False,
        frozen_stages=0,  # the stem (freeze_at: 0, freeze_stem_only: True)
        norm_cfg=dict(type='FrozenBatchNorm2d')),  # ImageNet weights: init_cfg hgnetv2://B4
    neck=dict(
        type='DFineHybridEncoder',
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
        type='DFINEDecoder',
        in_channels=[256, 256, 256],
        embed_dims=256,
        num_queries=300,
        num_layers=6,
        layer_cfg=dict(num_heads=8, num_levels=3, num_points=[3, 6, 3], ffn_dims=1024,
                       dropout=0.0, act='relu')),
    denoising=dict(num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0,
                   absolute_sizes=True),
    bbox_head=dict(
        type='DFINEHead',
        num_classes=80,
        embed_dims=256,
        eval_idx=-1,
        reg_max=32,
        reg_scale=4.0,
        loss_cls=dict(type='RTDETRVarifocalLoss', alpha=0.75, gamma=2.0, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0),
        loss_fgl=dict(type='FineGrainedLocalizationLoss', loss_weight=0.15),
        loss_ddf=dict(type='DecoupledDistillationLoss', temperature=5.0, loss_weight=1.5)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0, alpha=0.25, gamma=2.0),
                dict(type='BBoxL1Cost', weight=5.0),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=300))
