"""Runs the ORIGINAL D-FINE hybrid encoder on fixed inputs and saves weights + outputs.

First half of the D-FINE encoder parity check; run it in an environment with the original's
dependencies (torch, pyyaml), never in detr_plugin's::

    python tools/model_converters/dfine_encoder_parity_reference.py \
        --dfine-root /work/ref/D-FINE --sizes n s l --out dfine_encoder.pth

For each model size the encoder is built from the original's own YAML config
(configs/dfine/dfine_hgnetv2_<size>_coco.yml, ``eval_spatial_size`` included) after
``torch.manual_seed(seed)``; its weights get seeded noise, its BatchNorm statistics are calibrated
on the inputs and then perturbed (as rtdetr_parity_reference.py does). The file holds, per size:
``config`` (the YAML's HybridEncoder section), ``state_dict``, ``inputs`` (the backbone levels a
640 x 640 image gives, finest first), ``eval`` (the eval-mode outputs), ``train`` (the outputs of
a training-mode forward of the same inputs, BatchNorm on batch statistics) and ``eval64`` /
``train64``, the same with the encoder and inputs cast to float64 (the cached position embedding
stays float32, as the original keeps it). The second half, dfine_encoder_parity.py, converts the
weights and compares detr_plugin's outputs.
"""
import argparse
import importlib
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtdetr_parity_reference import calibrate_batchnorm, perturb  # noqa: E402


def import_encoder(root: str):
    """The original's HybridEncoder class and YAMLConfig, without the packages' ``__init__``
    (which import the data pipeline and the rest of the model zoo)."""
    sys.path.insert(0, root)
    for name in ('src', 'src.zoo', 'src.zoo.dfine'):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    from src.core import YAMLConfig
    encoder = importlib.import_module('src.zoo.dfine.hybrid_encoder')
    return encoder.HybridEncoder, YAMLConfig


@torch.no_grad()
def run(encoder: torch.nn.Module, inputs, training: bool):
    encoder.train(training)
    return [o.clone() for o in encoder(inputs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dfine-root', required=True, help='path of Peterande/D-FINE')
    parser.add_argument('--sizes', nargs='+', default=['n', 's', 'l'],
                        choices=['n', 's', 'm', 'l', 'x'])
    parser.add_argument('--out', required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch-size', type=int, default=2)
    args = parser.parse_args()

    HybridEncoder, YAMLConfig = import_encoder(args.dfine_root)
    results = {}
    for size in args.sizes:
        path = os.path.join(args.dfine_root, 'configs', 'dfine', f'dfine_hgnetv2_{size}_coco.yml')
        yaml_cfg = YAMLConfig(path).yaml_cfg
        config = dict(yaml_cfg['HybridEncoder'], eval_spatial_size=yaml_cfg['eval_spatial_size'])
        torch.manual_seed(args.seed)
        encoder = HybridEncoder(**config)
        generator = torch.Generator().manual_seed(args.seed)
        height, width = config['eval_spatial_size']
        inputs = [torch.randn(args.batch_size, c, height // s, width // s, generator=generator)
                  for c, s in zip(config['in_channels'], config['feat_strides'])]
        perturb(encoder, generator, stats=False)
        calibrate_batchnorm(encoder, inputs)
        perturb(encoder, generator, stats=True)
        state_dict = {k: v.clone() for k, v in encoder.state_dict().items()}
        outputs = dict(eval=run(encoder, inputs, training=False),
                       train=run(encoder, inputs, training=True))
        encoder.load_state_dict(state_dict)  # the training pass moved the running statistics
        encoder.double()
        inputs64 = [x.double() for x in inputs]
        outputs.update(eval64=run(encoder, inputs64, training=False),
                       train64=run(encoder, inputs64, training=True))
        results[size] = dict(config=config, state_dict=state_dict, inputs=inputs, **outputs)
        eval_outputs = outputs['eval']
        print(f'{size}: {len(state_dict)} tensors, '
              f'{sum(p.numel() for p in encoder.parameters())} parameters, outputs '
              f'{[tuple(o.shape) for o in eval_outputs]}')
    torch.save(dict(seed=args.seed, sizes=results, torch_version=torch.__version__), args.out)
    print(f'-> {args.out}')


if __name__ == '__main__':
    main()
