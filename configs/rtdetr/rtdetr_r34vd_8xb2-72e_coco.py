# RT-DETR R34-vd (rtdetr_r34vd_6x_coco.yml): as R18 with 4 decoder layers.
# Expected: 48.9 AP on val2017 (paper, Table 2).
_base_ = './rtdetr_r18vd_8xb2-72e_coco.py'

model = dict(
    backbone=dict(depth=34, init_cfg=dict(checkpoint='presnet://resnet34vd')),
    decoder=dict(num_layers=4))
