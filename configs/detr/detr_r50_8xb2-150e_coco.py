# DETR R50, the paper's recipe (Carion et al. 2020), with its multi-scale training and random crop.
_base_ = [
    '../_base_/models/detr_r50.py', '../_base_/datasets/coco_detection_detr_aug.py',
    '../_base_/schedules/detr_150e.py', '../_base_/default_runtime.py'
]
