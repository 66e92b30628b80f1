# D-FINE-S (dfine_hgnetv2_s_coco.yml): HGNetv2-B0 with learnable affine blocks, trainable
# BatchNorm and no frozen stem; the encoder at expansion 0.5 and depth 0.34; 3 decoder layers.
# 132 epochs, augmentation stopped and the restart from the best checkpoint at epoch 120; 640 drawn
# 20 times in the multi-scale list. AdamW 2e-4, the backbone at 1e-4; no weight decay on the
# encoder's and decoder's norms and biases.
# Expected: 48.5 AP on val2017 (the original's README, D-FINE-S).
_base_ = './dfine_hgnetv2-l_8xb4-80e_coco.py'

base_size_repeat = 20
model = dict(
    backbone=dict(
        arch='B0',
        use_lab=True,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=dict(checkpoint='hgnetv2://B0')),
    neck=dict(in_channels=[256, 512, 1024], expansion=0.5, depth_mult=0.34),
    decoder=dict(num_layers=3),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMultiScaleResize',
             sizes=list(range(480, 640, 32)) + [640] * base_size_repeat +
             list(range(800, 640, -32)))
    ]))

# the original's groups: '^(?=.*backbone)(?!.*norm|bn).*$' and '^(?=.*backbone)(?=.*norm|bn).*$'
# at 1e-4 (the second is empty: no backbone name holds 'norm'; its BatchNorms, named bn, decay);
# '^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$' without decay (also the attention's
# in_proj_bias, which mmengine's bias rule, by the exact name 'bias', does not cover)
optim_wrapper = dict(
    optimizer=dict(lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5),
                                    'in_proj_bias': dict(decay_mult=0.0)},
                       bias_decay_mult=0.0))

max_epochs = 132
stop_epoch = 120
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(
    augmentation_window=dict(
        windows=dict(PhotoMetricDistortion=(0, stop_epoch), Expand=(0, stop_epoch),
                     RandomIoUCrop=(0, stop_epoch), BatchMultiScaleResize=(0, stop_epoch))),
    restart_from_best=dict(epoch=stop_epoch))
