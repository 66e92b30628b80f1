# COCO with the training augmentation of the DETR paper, shared by DETR and Deformable DETR (their
# original code uses the same transforms): flip; then either a resize of the shorter side to 480-800
# (step 32, longer side <= 1333), or, with p 0.5, a resize to 400-600 (longer side free), a random
# crop of 384-600 and the same multi-scale resize. Images without objects are kept, as the originals.
_base_ = './coco_detection.py'

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
