# RT-DETRv2 R18-vd with 1 sampling point(s) per head and level (rtdetrv2_r18vd_sp1_120e_coco.yml).
# Expected: 47.3 AP on val2017 (the original's README, ablation on sampling points).
_base_ = './rtdetrv2_r18vd_8xb2-120e_coco.py'

model = dict(decoder=dict(layer_cfg=dict(num_points=[1, 1, 1])))
