# RT-DETR R50-vd, the paper's COCO recipe (rtdetr_pytorch's rtdetr_r50vd_6x_coco.yml): 72 epochs,
# total batch 16, AdamW 1e-4 (backbone 1e-5), weight decay 1e-4 except on norms and biases,
# gradient clip 0.1, EMA 0.9999 with 2000 warm-up iterations, 640x640 inputs with batch-level
# multi-scale 480-800 in training. Expected: 53.1 AP on val2017 (paper, Table 2).
#
# The backbone starts from the original's ImageNet weights (PaddleClas ResNet-vd), downloaded on
# first use and converted by presnet:// (detr_plugin/converters/presnet.py).
_base_ = [
    '../_base_/models/rtdetr_r50vd.py', '../_base_/datasets/coco_detection_rtdetr.py',
    '../_base_/default_runtime.py'
]

model = dict(
    # BatchNorm over the global batch in distributed training, as the original's sync_bn (it
    # matters where BatchNorm trains: the encoder, R18/R34 backbones); no host waits, unlike
    # mmengine's sync_bn='torch' (docs/benchmarks.md)
    sync_bn=True,
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='presnet://resnet50vd')),
    # the original's model.multi_scale: one size per batch and process from its list (640
    # three times), nearest interpolation
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchMultiScaleResize',
             sizes=[480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800])
    ]))

optim_wrapper = dict(
    type='OptimWrapper',
    # one parameter group per distinct setting (fewer optimizer kernel launches than mmengine's
    # default of one group per tensor); same update
    constructor='GroupedOptimWrapperConstructor',
    # fused: one kernel per group updates every tensor (and, under AMP, skips a step with
    # non-finite gradients on the GPU, where the unfused update reads the check on the host)
    optimizer=dict(type='AdamW', fused=True, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        # the original's regex groups match 'norm' and 'bias' anywhere in its names, so also
        # the attention's in_proj_bias (no decay) but not the BatchNorm and LayerNorm it names
        # by number (decayed); mmengine's rules go by module type and the exact name 'bias'
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'in_proj_bias': dict(decay_mult=0.0),
            'neck.input_proj.0.1.weight': dict(decay_mult=1.0),
            'neck.input_proj.1.1.weight': dict(decay_mult=1.0),
            'neck.input_proj.2.1.weight': dict(decay_mult=1.0),
            'decoder.enc_output.1.weight': dict(decay_mult=1.0)
        },
        norm_decay_mult=0.0,
        bias_decay_mult=0.0))

max_epochs = 72
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# the original keeps the learning rate constant (MultiStepLR at epoch 1000, no warm-up)

custom_hooks = [
    # the default runtime's checks, resume state and CPU binding, plus EMA:
    dict(type='NumClassesCheckHook'),
    dict(type='RNGStateHook'),
    dict(type='CPUAffinityHook'),
    # decay 0.9999 * (1 - exp(-(1 + step) / 2000)), buffers included, as the original's ModelEMA
    # (mmdet's ExpMomentumEMA updated with multi-tensor kernels)
    dict(type='EMAHook', ema_type='ForeachExpMomentumEMA', momentum=0.0001, gamma=2000,
         update_buffers=True, priority=49)
]
auto_scale_lr = dict(base_batch_size=16)
