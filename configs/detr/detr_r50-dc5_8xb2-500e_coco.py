# DC5: the last stage keeps stride 16, with dilation 2 instead of a stride-2 convolution
_base_ = './detr_r50_8xb2-500e_coco.py'

model = dict(backbone=dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)))
