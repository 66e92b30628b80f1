# DEIM-D-FINE-X (deim_hgnetv2_x_coco.yml): DEIM-D-FINE-L's recipe on D-FINE-X's model
# (HGNetv2-B5, a 384-wide encoder with feed-forward 2048, the decoder's levels projected to 256,
# reg_scale 8), the backbone at 5e-6.
# Expected: 56.5 AP on val2017 (the original's README, DEIM-D-FINE-X).
_base_ = './deim_dfine_hgnetv2-l_8xb4-58e_coco.py'

model = dict(
    backbone=dict(arch='B5', init_cfg=dict(checkpoint='hgnetv2://B5')),
    neck=dict(embed_dims=384, ffn_dims=2048),
    decoder=dict(in_channels=[384, 384, 384]),
    bbox_head=dict(reg_scale=8.0))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.01)}))
