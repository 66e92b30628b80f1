# COCO with DEIM's Dense O2O data (Huang et al., CVPR 2025; DEIM's configs/base/deim.yml over
# dataloader.yml): more objects per image for one-to-one matching, through Mosaic and MixUp.
# Per sample, with p 0.5 a Mosaic (four images at shorter side 320 on a 2 x 2 canvas, rotation
# +-10 degrees, shift +-10 %, scale 0.5-1.5, fill 0) and then the photometric distortion; otherwise
# the photometric distortion, zoom-out and IoU crop (DEIM never zooms out or crops a mosaic). Then
# flip and a 640 x 640 resize. Per batch, with p 0.5, MixUp (each image blended with the previous
# one at 0.45-0.55, both images' objects kept), then batch multi-scale (dense_o2o_batch_augments:
# give them to model.data_preprocessor.batch_augments). Which of these run in which epoch is the
# schedule's AugmentationWindowHook (configs/_base_/schedules/deim_dense_o2o_58e.py).
#
# Mosaic draws its three other images from the whole dataset (DEIM's use_cache=False), so the
# dataset is mmdet's MultiImageMixDataset: the loading runs in the inner dataset, the
# augmentations in the wrapper (--cfg-options reach the COCO dataset as
# train_dataloader.dataset.dataset.*). No copy-blend: DEIM's D-FINE configs have none.
_base_ = './coco_detection_rtdetr.py'  # its test pipeline and loaders; the training data below

backend_args = None
load_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
]
train_pipeline = [
    dict(type='Mosaic', img_scale=320, rotation_range=10, translation_range=(0.1, 0.1),
         scaling_range=(0.5, 1.5), prob=0.5, fill=0),
    # DEIM's RandomPhotometricDistort(p=0.5), as the RT-DETR configs write it
    dict(type='PhotoMetricDistortion', brightness_delta=16, hue_delta=9),
    dict(type='SkipAfterMosaic', transforms=[
        # mmdet's Expand bit for bit, without writing the canvas's zeros
        dict(type='ZeroFillExpand', mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=0.5),
        dict(type='RandomIoUCrop', prob=0.8),
    ]),
    # keep_empty=False: an image whose boxes all fall below the minimum is kept with no box, as
    # DEIM's SanitizeBoundingBoxes keeps it. mmdet's default (True) returns None instead, which
    # MultiImageMixDataset retries on the same input 15 times and then raises 'always return None'
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    # mmdet's flip (a view): MultiImageMixDataset copies the results before each transform, so
    # ContiguousRandomFlip's own copy would gain nothing here
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=(640, 640), keep_ratio=False),
    # again after the resize (a zoomed-out box can shrink below 1 px), keeping empty images too
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs')
]
# MixUp before the multi-scale resize, as DEIM's collate function. Multi-scale: one square side
# per batch from 480-608 and 672-800 in steps of 32 and 640 repeated base_size_repeat times (3 in
# dataloader.yml; the models' D-FINE configs: S 20, M 6, L 4, X 3, N no multi-scale).
base_size_repeat = 3
dense_o2o_batch_augments = [
    dict(type='BatchMixUp', prob=0.5, ratio_range=(0.45, 0.55)),
    dict(type='BatchMultiScaleResize',
         sizes=list(range(480, 640, 32)) + [640] * base_size_repeat + list(range(800, 640, -32))),
]

train_dataloader = dict(
    batch_size=4,  # DEIM: 32 images on 8 GPUs
    dataset=dict(
        _delete_=True,
        type='MultiImageMixDataset',
        dataset=dict(
            type={{_base_.dataset_type}},
            data_root={{_base_.data_root}},
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'),
            filter_cfg=dict(filter_empty_gt=False),  # as DEIM's CocoDetection: every image
            pipeline=load_pipeline,
            backend_args=backend_args),
        pipeline=train_pipeline))
