# D-FINE-L (Peng et al., ICLR 2025; Peterande/D-FINE configs/dfine/include/dfine_hgnetv2.yml with
# dfine_hgnetv2_l_coco.yml's backbone): RT-DETR's layout (inputs RGB in [0, 1], query selection,
# denoising, matching costs) with HGNetv2-B4 (stem frozen, frozen norms), D-FINE's hybrid encoder
# and decoder (gated layers with [3, 6, 3] sampling points) and its head (32-bin edge
# distributions, LQE, FGL and DDF losses). Other sizes (dfine_hgnetv2_{n,s,m,x}_coco.yml)
# override the backbone, the encoder width/depth and the number of decoder layers.
_base_ = './rtdetr_r50vd.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='HGNetv2',
        arch='B4',
        out_indices=(1, 2, 3),  # strides 8, 16, 32
        use_lab=False,
        frozen_stages=0,  # the stem (freeze_at: 0, freeze_stem_only: True)
        norm_cfg=dict(type='FrozenBatchNorm2d')),  # ImageNet weights: init_cfg hgnetv2://B4
    neck=dict(type='DFineHybridEncoder'),
    decoder=dict(type='DFINEDecoder', layer_cfg=dict(num_points=[3, 6, 3])),
    denoising=dict(absolute_sizes=True),
    bbox_head=dict(
        type='DFINEHead',
        reg_max=32,
        reg_scale=4.0,
        loss_fgl=dict(type='FineGrainedLocalizationLoss', loss_weight=0.15),
        loss_ddf=dict(type='DecoupledDistillationLoss', temperature=5.0, loss_weight=1.5)))
