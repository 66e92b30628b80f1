# COCO with RT-DETR's training data recipe (rtdetr_pytorch's dataloader.yml): photometric
# distortion, zoom-out, IoU crop, flip and a 640 x 640 resize; 640 x 640 at test time. Used by
# the RT-DETR(v2) and D-FINE COCO configs (their batch multi-scale is the model's data
# preprocessor's).
_base_ = './coco_detection.py'

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    # the original's RandomPhotometricDistort(p=0.5): every image, each operation with
    # probability 0.5 (as mmdet's PhotoMetricDistortion does); hue +-0.05 turn = 9 of OpenCV's
    # 180 units; its brightness factor 0.875-1.125 is about +-16 grey levels
    dict(type='PhotoMetricDistortion', brightness_delta=16, hue_delta=9),
    # zoom out: mmdet's Expand, bit for bit, without writing the canvas's zeros
    dict(type='ZeroFillExpand', mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=0.5),
    # the original's IoU crop: accept a window when the best box centred in it overlaps enough
    dict(type='RandomIoUCrop', prob=0.8),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    # mmdet's RandomFlip, bit for bit, as a contiguous array (Resize reads a flipped view slowly)
    dict(type='ContiguousRandomFlip', prob=0.5),
    dict(type='Resize', scale=(640, 640), keep_ratio=False),
    # again after the resize, as the original does: a zoomed-out box can shrink below 1 px
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(640, 640), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    batch_sampler=None,  # every image is resized to 640 x 640
    dataset=dict(filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
