# D-FINE-S trained from scratch on deepforest's real airborne photographs of tree crowns, with the
# data, input size, schedule, batch and evaluation of
# configs/rtdetr/rtdetr_r18vd_1xb8-deepforest_trees.py (prepare the data as it says), so that the
# two mAP curves compare like with like. The model is dfine_hgnetv2-s_8xb4-132e_coco.py's
# (HGNetv2-B0 with learnable affine blocks, the encoder at expansion 0.5 and depth 0.34, 3 decoder
# layers, D-FINE's head and losses) with random backbone weights, one class and 100 queries.
#
# Changed from the D-FINE-S COCO recipe, for random weights and 8 iterations an epoch: the backbone
# learns at the full rate (COCO: half, for ImageNet weights); no 500-iteration warm-up and no
# augmentation stop or restart from the best checkpoint (RT-DETR's schedule instead: constant rate,
# tenfold drop for the last 10% of the epochs). Kept: AdamW 2e-4, weight decay 1e-4 except on the
# encoder's and decoder's norms and biases, gradient clip 0.1, EMA with 1000 warm-up updates, the
# losses and matching costs.
_base_ = '../rtdetr/rtdetr_r18vd_1xb8-deepforest_trees.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='HGNetv2',
        arch='B0',
        out_indices=(1, 2, 3),  # strides 8, 16, 32
        use_lab=True,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=None),  # from scratch: no ImageNet weights
    neck=dict(type='DFineHybridEncoder', in_channels=[256, 512, 1024], expansion=0.5,
              depth_mult=0.34),
    decoder=dict(type='DFINEDecoder', layer_cfg=dict(num_points=[3, 6, 3])),
    denoising=dict(absolute_sizes=True),
    bbox_head=dict(
        type='DFINEHead',
        reg_max=32,
        reg_scale=4.0,
        loss_fgl=dict(type='FineGrainedLocalizationLoss', loss_weight=0.15),
        loss_ddf=dict(type='DecoupledDistillationLoss', temperature=5.0, loss_weight=1.5)))

# D-FINE-S's groups (see its COCO config) with the backbone at the full rate; the 'backbone' key
# also keeps its BatchNorms decaying, as the original's regexes do
optim_wrapper = dict(
    optimizer=dict(lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={'backbone': dict(lr_mult=1.0), 'in_proj_bias': dict(decay_mult=0.0)},
        norm_decay_mult=0.0,
        bias_decay_mult=0.0))

custom_hooks = [
    dict(type='NumClassesCheckHook'),
    dict(type='RNGStateHook'),
    dict(type='CPUAffinityHook'),
    # D-FINE's ModelEMA: decay 0.9999 * (1 - exp(-updates / 1000)), buffers included
    dict(type='EMAHook', ema_type='ForeachExpMomentumEMA', momentum=0.0001, gamma=1000,
         update_buffers=True, priority=49)
]
