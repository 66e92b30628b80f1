# Deformable DETR R50 (single-scale queries, no refinement), the paper's recipe: multi-scale
# training with random crop as DETR, images without objects kept.
_base_ = [
    '../_base_/models/deformable_detr_r50.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/deformable_detr_50e.py', '../_base_/default_runtime.py'
]

train_scales = [(s, 1333) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[[dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
                    [
                        # the long side is left free, as the original's crop branch
                        dict(type='RandomChoiceResize',
                             scales=[(400, 4200), (500, 4200), (600, 4200)],
                             keep_ratio=True),
                        dict(type='RandomCrop',
                             crop_type='absolute_range',
                             crop_size=(384, 600),
                             allow_negative_crop=True),
                        dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)
                    ]]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    dataset=dict(filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
