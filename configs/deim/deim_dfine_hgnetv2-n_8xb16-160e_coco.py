# DEIM-D-FINE-N (deim_hgnetv2_n_coco.yml): D-FINE-N's model (HGNetv2-B0's strides 16 and 32, a
# 128-wide encoder and decoder, 2 levels with 6 points each) with DEIM-D-FINE-L's settings. 160
# epochs at a total batch of 128 without batch multi-scale; the learning rate stays flat after
# the warm-up (flat_end 7800 and lr_gamma 1); Dense O2O in epochs 4-77, photometric / zoom-out /
# IoU crop to 147, restart at 148. AdamW 8e-4, the backbone at 4e-4, weight decay 1e-4; the
# original's groups as D-FINE-N's: no decay on the encoder's and decoder's norms and biases.
# Expected: 43.0 AP on val2017 (the original's README, DEIM-D-FINE-N).
_base_ = './deim_dfine_hgnetv2-l_8xb4-58e_coco.py'

model = dict(
    backbone=dict(arch='B0', use_lab=True, out_indices=(2, 3),
                  init_cfg=dict(checkpoint='hgnetv2://B0')),
    neck=dict(in_channels=[512, 1024], embed_dims=128, ffn_dims=512, encoder_levels=[1],
              expansion=0.34, depth_mult=0.5),
    decoder=dict(num_layers=3, in_channels=[128, 128], embed_dims=128,
                 layer_cfg=dict(num_levels=2, num_points=[6, 6], ffn_dims=512)),
    bbox_head=dict(embed_dims=128),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMixUp', prob=0.5, ratio_range=(0.45, 0.55))]))

train_dataloader = dict(batch_size=16)  # 128 images on 8 GPUs
# '^(?=.*backbone)(?!.*norm|bn).*$' at 4e-4 (its BatchNorms, named bn, decay) and
# '^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$' without decay (also in_proj_bias)
optim_wrapper = dict(
    optimizer=dict(lr=8e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5),
                                    'in_proj_bias': dict(decay_mult=0.0)},
                       bias_decay_mult=0.0))

max_epochs = 160
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='FlatCosineLR', by_epoch=True, convert_to_iter_based=True, begin=0,
         end=max_epochs, warmup_iters=2000, flat_end=7800, final_steps=12,
         lr_gamma=1.0, start_factor=1 / 500)
]
default_hooks = dict(
    augmentation_window=dict(
        windows=dict(_delete_=True, Mosaic=(4, 78), BatchMixUp=(4, 78),
                     PhotoMetricDistortion=(4, 148), SkipAfterMosaic=(4, 148))),
    restart_from_best=dict(epoch=148))
auto_scale_lr = dict(base_batch_size=128)
