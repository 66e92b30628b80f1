# D-FINE-N (dfine_hgnetv2_n_coco.yml): HGNetv2-B0's last two stages (strides 16 and 32), a
# 128-wide encoder (feed-forward 512, attention on the coarser level, expansion 0.34, depth 0.5)
# and decoder (2 levels with 6 sampling points each, feed-forward 512, 3 layers). 160 epochs at a
# total batch of 128, augmentation stopped and the restart at epoch 148, no batch multi-scale.
# AdamW 8e-4, the backbone at 4e-4; otherwise D-FINE-S's recipe.
# Expected: 42.8 AP on val2017 (the original's README, D-FINE-N).
_base_ = './dfine_hgnetv2-s_8xb4-132e_coco.py'

model = dict(
    backbone=dict(out_indices=(2, 3)),
    neck=dict(in_channels=[512, 1024], embed_dims=128, ffn_dims=512, encoder_levels=[1],
              expansion=0.34, depth_mult=0.5),
    decoder=dict(in_channels=[128, 128], embed_dims=128,
                 layer_cfg=dict(num_levels=2, num_points=[6, 6], ffn_dims=512)),
    bbox_head=dict(embed_dims=128),
    data_preprocessor=dict(batch_augments=None))  # base_size_repeat: ~

train_dataloader = dict(batch_size=16)  # 128 images on 8 GPUs
optim_wrapper = dict(optimizer=dict(lr=8e-4))  # backbone: 0.5 x 8e-4

max_epochs = 160
stop_epoch = 148
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(
    augmentation_window=dict(
        windows=dict(_delete_=True, PhotoMetricDistortion=(0, stop_epoch),
                     Expand=(0, stop_epoch), RandomIoUCrop=(0, stop_epoch))),
    restart_from_best=dict(epoch=stop_epoch))
auto_scale_lr = dict(base_batch_size=128)
