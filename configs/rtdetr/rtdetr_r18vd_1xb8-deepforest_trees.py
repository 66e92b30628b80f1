# RT-DETR R18-vd trained from scratch on real airborne photographs of tree crowns: the photographs
# that ship in the deepforest package (MIT), tiled to about 320 px and split by
#   pip install --no-deps deepforest==2.1.0
#   python tools/dataset_converters/deepforest_trees_to_coco.py --out data/deepforest_trees
# (58 train tiles with 672 crowns, 12 val tiles with 278; one class). The template for your own
# data (rtdetr_r18vd_1xb8-mydata.py) with what small data and no pretrained weights need: the
# backbone starts from random weights and trains at the full learning rate, inputs are 320 px
# (multi-scale 256-384 in training), 100 queries (at most 61 crowns per tile), flips in all
# directions (photographs taken from above), and a long schedule of short epochs.
_base_ = './rtdetr_r18vd_1xb8-mydata.py'

data_root = 'data/deepforest_trees/'
classes = ('tree',)
metainfo = dict(classes=classes, palette=[(40, 190, 60)])
image_size = 320
max_epochs = 200
num_queries = 100

model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchSyncRandomResize', random_size_range=(256, 384), size_divisor=32,
             interval=1)
    ]),
    backbone=dict(init_cfg=None),  # from scratch: no ImageNet weights
    decoder=dict(num_queries=num_queries),
    bbox_head=dict(num_classes=len(classes)),
    test_cfg=dict(max_per_img=num_queries))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PhotoMetricDistortion', brightness_delta=16, hue_delta=9),
    dict(type='RandomIoUCrop', prob=0.5),  # zoom in; the ground distance per pixel is fixed
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25],
         direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# random backbone weights learn at the full rate (the COCO recipe's 0.1 is for ImageNet weights)
backbone_norm = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={
        'backbone': dict(lr_mult=1.0),
        'backbone.stem.1.': backbone_norm, 'backbone.stem.4.': backbone_norm,
        'backbone.stem.7.': backbone_norm, '.downsample.2.': backbone_norm,
        '.bn1.weight': backbone_norm, '.bn1.bias': backbone_norm,
        '.bn2.weight': backbone_norm, '.bn2.bias': backbone_norm}))
# 8 iterations an epoch: the learning rate drops tenfold for the last 10% of the epochs
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[int(0.9 * max_epochs)], gamma=0.1)
]
default_hooks = dict(logger=dict(interval=8))
