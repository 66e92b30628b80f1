# DC5: the last stage keeps stride 16, with dilation 2 instead of a stride-2 convolution; its
# first block keeps dilation 1, as torchvision's replace_stride_with_dilation (DilatedResNet)
_base_ = './detr_r50_8xb2-500e_coco.py'

model = dict(backbone=dict(type='DilatedResNet', strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)))
