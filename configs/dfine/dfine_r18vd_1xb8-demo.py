# D-FINE's decoder and head (gated cross-attention layers, fine-grained distribution refinement,
# LQE, GO-LSD losses) on the RT-DETR demo model (configs/rtdetr/rtdetr_r18vd_1xb8-demo.py:
# ResNet-18-vd and RT-DETR's hybrid encoder, width 128, 3 decoder layers, 30 queries), trained
# from scratch on the generated demo data. A small check of the D-FINE parts until the HGNetv2
# configs; the rest of the recipe (data, schedule, optimizer) is the RT-DETR demo's.
_base_ = '../rtdetr/rtdetr_r18vd_1xb8-demo.py'

model = dict(
    decoder=dict(type='DFINEDecoder', layer_cfg=dict(num_points=[3, 6, 3])),
    denoising=dict(absolute_sizes=True),
    bbox_head=dict(
        type='DFINEHead',
        reg_max=32,
        reg_scale=4.0,
        loss_fgl=dict(type='FineGrainedLocalizationLoss', loss_weight=0.15),
        loss_ddf=dict(type='DecoupledDistillationLoss', temperature=5.0, loss_weight=1.5)))
