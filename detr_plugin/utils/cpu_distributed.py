"""``--launcher pytorch`` on machines without CUDA: CPU processes with the gloo backend."""
import torch
import torch.distributed as torch_dist
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """Lets ``--launcher pytorch`` run on a machine without CUDA (gloo backend, CPU processes).

    mmengine 0.10.7 calls ``torch.cuda.set_device`` when it starts the process group and wraps
    the model with ``device_ids=[LOCAL_RANK]``; both fail on CPU. Here the group is started
    first (the Runner then leaves it alone) and the wrapper gets ``device_ids=None``.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available() or torch_dist.is_initialized():
        return
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
    if backend != 'gloo':
        raise ValueError(f'--launcher pytorch without CUDA needs the gloo backend, but '
                         f'env_cfg.dist_cfg.backend is {backend!r}: add '
                         f'--cfg-options env_cfg.dist_cfg.backend=gloo')
    torch_dist.init_process_group(backend='gloo')   # RANK, WORLD_SIZE, MASTER_* from torchrun
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
