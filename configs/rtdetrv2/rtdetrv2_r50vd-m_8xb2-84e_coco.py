# RT-DETRv2 R50-vd-m (rtdetrv2_r50vd_m_7x_coco.yml): CCFM at half width, the third decoder layer's
# output at inference, 84 epochs, strong augmentation and multi-scale stopped from epoch 81.
# Expected: 51.9 AP on val2017 (the original's README, RT-DETRv2-M).
_base_ = './rtdetrv2_r50vd_8xb2-72e_coco.py'

model = dict(neck=dict(expansion=0.5), bbox_head=dict(eval_idx=2))

max_epochs = 84
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(stop_augmentation=dict(stop_epoch=81))
