_base_ = './detr_r50_8xb2-500e_coco.py'

model = dict(
    backbone=dict(depth=101, init_cfg=dict(
        checkpoint='https://download.pytorch.org/models/resnet101-63fe2227.pth')))
