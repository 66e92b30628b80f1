# RT-DETRv2 R18-vd with 2 sampling point(s) per head and level (rtdetrv2_r18vd_sp2_120e_coco.yml).
# Expected: 47.7 AP on val2017 (the original's README, ablation on sampling points).
_base_ = './rtdetrv2_r18vd_8xb2-120e_coco.py'

model = dict(decoder=dict(layer_cfg=dict(num_points=[2, 2, 2])))
