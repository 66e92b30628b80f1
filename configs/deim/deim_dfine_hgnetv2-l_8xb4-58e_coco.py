# DEIM-D-FINE-L (Huang et al., CVPR 2025; ShihuaHuang95/DEIM configs/deim_dfine/
# deim_hgnetv2_l_coco.yml over dfine_hgnetv2_l_coco.yml and base/deim.yml): D-FINE-L trained with
# Dense O2O (Mosaic, MixUp) and the matchability-aware loss, in 58 epochs. The other sizes'
# configs inherit this one and state what differs.
# Expected: 54.7 AP on val2017 (the original's README, DEIM-D-FINE-L).
#
# Model: D-FINE-L's with a trainable backbone (no frozen stem, BatchNorm trained: deim.yml's
# freeze_at -1, freeze_norm False), SiLU in the decoder layers' feed-forward, the query position
# and box MLPs and the LQE, and MAL (gamma 1.5) as the class loss. Data and schedule: the bases'
# (configs/_base_/datasets/coco_detection_dense_o2o.py, configs/_base_/schedules/
# deim_dense_o2o_58e.py: FlatCosineLR, augmentation windows 4/29/50, restart at 50, EMA).
# AdamW 5e-4, the backbone at 2.5e-5, weight decay 1.25e-4 except on the encoder's and decoder's
# norms. The original trains in mixed precision (use_amp: True): add --amp to tools/train.py.
_base_ = [
    '../_base_/models/dfine_hgnetv2.py', '../_base_/datasets/coco_detection_dense_o2o.py',
    '../_base_/schedules/deim_dense_o2o_58e.py'
]

model = dict(
    sync_bn=True,  # the original's sync_bn
    backbone=dict(
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint='hgnetv2://B4')),
    decoder=dict(mlp_act='silu', layer_cfg=dict(act='silu')),
    bbox_head=dict(
        mlp_act='silu',
        lqe_act='silu',
        loss_cls=dict(_delete_=True, type='MatchabilityAwareLoss', gamma=1.5, loss_weight=1.0),
        loss_cls_name='loss_mal'),
    data_preprocessor=dict(batch_augments={{_base_.dense_o2o_batch_augments}}))

optim_wrapper = dict(
    paramwise_cfg=dict(
        # the original's groups: '^(?=.*backbone)(?!.*norm|bn).*$' at 2.5e-5 (the whole backbone,
        # its BatchNorms, named bn, included and decayed) and '^(?=.*(?:encoder|decoder))
        # (?=.*(?:norm|bn)).*$' without decay (every module of ours named so is a norm layer)
        custom_keys={'backbone': dict(lr_mult=0.05)},
        norm_decay_mult=0.0))
