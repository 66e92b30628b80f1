# Runtime settings shared by every detr_plugin config: scope, hooks, environment, logging.
default_scope = 'detr_plugin'
# Importing detr_plugin registers our modules; a config that inherits this file needs no other setup.
custom_imports = dict(imports=['detr_plugin'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # deletes outdated checkpoints (max_keep_ckpts) only after the new one is complete
    checkpoint=dict(type='SafeCheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'),
    # logs what each COCO json gave its dataset (boxes per class, classes matching no json
    # category, boxes dropped and why) and stops a run that loaded no box; a default hook, so a
    # config that replaces custom_hooks keeps it
    dataset_check=dict(type='DatasetCheckHook'))

# NumClassesCheckHook stops a run before its first iteration when the head's num_classes disagrees
# with the dataset; RNGStateHook keeps the random streams in checkpoints so that --resume is exact;
# CPUAffinityHook gives each rank of a multi-GPU host its own CPU cores (unless the launcher did).
custom_hooks = [dict(type='NumClassesCheckHook'), dict(type='RNGStateHook'),
                dict(type='CPUAffinityHook')]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
