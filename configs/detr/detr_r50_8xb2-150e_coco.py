# DETR R50, the paper's recipe (Carion et al. 2020), multi-scale training with random crop.
_base_ = [
    '../_base_/models/detr_r50.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/detr_150e.py', '../_base_/default_runtime.py'
]

# multi-scale training: shorter side 480-800 (step 32), longer side <= 1333; with p 0.5 first a
# resize to 400-600 and a random crop of 384-600, as in the original code
train_scales = [(s, 1333) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[[dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
                    [
                        dict(type='RandomChoiceResize',
                             scales=[(400, 1333), (500, 1333), (600, 1333)],
                             keep_ratio=True),
                        dict(type='RandomCrop',
                             crop_type='absolute_range',
                             crop_size=(384, 600),
                             allow_negative_crop=True),
                        dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)
                    ]]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
