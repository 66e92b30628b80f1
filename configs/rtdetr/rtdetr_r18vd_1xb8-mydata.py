# RT-DETR R18-vd for your own COCO-format data: edit the block below, nothing else. The rest is the
# COCO recipe of rtdetr_r18vd_8xb2-72e_coco.py (300 queries, 300 detections per image, 640x640,
# EMA), plus a checkpoint every epoch and the best one by COCO bbox mAP kept as best_coco_*.pth.
# The backbone starts from the ImageNet weights the COCO config names (model.backbone.init_cfg).
# The values below fit the stand-in dataset that
#   python tools/misc/make_demo_dataset.py --out data/my_data
# writes (README, "Your own COCO-format data"); replace them with yours.
_base_ = './rtdetr_r18vd_8xb2-72e_coco.py'

# ---- your data ----------------------------------------------------------------------------------
data_root = 'data/my_data/'
# the category names of your json, in the order of its "categories" list (labels follow it)
classes = ('square', 'circle', 'triangle')
train_ann_file, train_images = 'annotations/instances_train.json', 'train/'
val_ann_file, val_images = 'annotations/instances_val.json', 'val/'
batch_size = 8   # per GPU; add --auto-scale-lr when your total batch is not 16
max_epochs = 72
# -------------------------------------------------------------------------------------------------

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
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='coco/bbox_mAP', rule='greater'))
