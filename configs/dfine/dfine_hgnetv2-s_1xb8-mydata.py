# D-FINE-S for your own COCO-format data: edit the block below, nothing else. The rest is the COCO
# recipe of dfine_hgnetv2-s_8xb4-132e_coco.py (300 queries, 300 detections per image, 640x640,
# multi-scale and strong augmentation until stop_epoch, then a restart from the best checkpoint,
# EMA), plus a checkpoint every epoch and the best one by COCO bbox mAP kept as best_coco_*.pth.
# The backbone starts from the authors' ImageNet weights (hgnetv2://B0: downloaded once into
# $TORCH_HOME/hub/checkpoints; offline, put PPHGNetV2_B0_stage1.pth there). To start from a COCO
# checkpoint instead, convert it (tools/model_converters/dfine_to_plugin.py) and set load_from.
# The values below fit the stand-in dataset that
#   python tools/misc/make_demo_dataset.py --out data/my_data
# writes (README, "Your own COCO-format data"); replace them with yours.
_base_ = './dfine_hgnetv2-s_8xb4-132e_coco.py'

# ---- your data ----------------------------------------------------------------------------------
data_root = 'data/my_data/'
# the category names of your json, in the order of its "categories" list (labels follow it)
classes = ('square', 'circle', 'triangle')
train_ann_file, train_images = 'annotations/instances_train.json', 'train/'
val_ann_file, val_images = 'annotations/instances_val.json', 'val/'
batch_size = 8   # per GPU; add --auto-scale-lr when your total batch is not 32
max_epochs = 72
# -------------------------------------------------------------------------------------------------

stop_epoch = max_epochs - max_epochs // 10  # the COCO recipe's share: 120 of 132
num_classes = len(classes)
# one colour per class for drawings (mmdet's visualizer needs at least one per class)
palette = [((71 * i + 220) % 256, (157 * i + 20) % 256, (37 * i + 60) % 256)
           for i in range(num_classes)]
metainfo = dict(classes=classes, palette=palette)

train_dataloader = dict(
    batch_size=batch_size,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=train_ann_file,
                 data_prefix=dict(img=train_images)))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=val_ann_file,
                 data_prefix=dict(img=val_images)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann_file)
test_evaluator = val_evaluator

model = dict(bbox_head=dict(num_classes=num_classes))
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='coco/bbox_mAP', rule='greater'),
    augmentation_window=dict(
        windows=dict(PhotoMetricDistortion=(0, stop_epoch), Expand=(0, stop_epoch),
                     RandomIoUCrop=(0, stop_epoch), BatchMultiScaleResize=(0, stop_epoch))),
    restart_from_best=dict(epoch=stop_epoch))
