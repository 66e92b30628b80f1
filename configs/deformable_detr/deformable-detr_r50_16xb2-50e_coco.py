# Deformable DETR R50 (no refinement, one stage), the paper's recipe: DETR's augmentation.
_base_ = [
    '../_base_/models/deformable_detr_r50.py', '../_base_/datasets/coco_detection_detr_aug.py',
    '../_base_/schedules/deformable_detr_50e.py', '../_base_/default_runtime.py'
]
