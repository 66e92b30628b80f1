# RT-DETR R34-vd (rtdetr_r34vd_6x_coco.yml): as R18 with 4 decoder layers.
# Expected: 48.9 AP on val2017 (paper, Table 2).
# Backbone weights: convert ResNet34_vd_pretrained_from_paddle.pth with rtdetr_to_plugin.py.
_base_ = './rtdetr_r18vd_8xb2-72e_coco.py'

model = dict(
    backbone=dict(depth=34, init_cfg=dict(checkpoint='checkpoints/presnet34vd_imagenet.pth')),
    decoder=dict(num_layers=4))
