"""Compares detr_plugin's DFineHybridEncoder with the original D-FINE encoder's saved outputs.

Second half of the D-FINE encoder parity check (the first, dfine_encoder_parity_reference.py,
runs the original)::

    python tools/model_converters/dfine_encoder_parity.py dfine_encoder.pth

For every model size in the file, our encoder is built from :data:`ENCODERS` (the original
YAML's HybridEncoder section in our argument names), loaded with the converted weights
(strictly: every key must match) and run on the same inputs in eval mode and in training mode
(BatchNorm on batch statistics), in float32 and in float64. Prints the largest absolute
differences per size and mode and exits non-zero when one fails (see :func:`compare`).

In float32 the two differ by about one unit in the last place after the attention layer (torch's
fused ``nn.MultiheadAttention`` against ours); the randomly initialised fusion convolutions amplify
that as they amplify the original's own float32 rounding, so that L's eval outputs differ by
~1e-4 where the original's own float32 and float64 runs differ as much. float64 shows the
arithmetic is the same.
"""
import argparse
import copy
import os
import sys
from typing import Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from detr_plugin.converters.dfine import convert_dfine_encoder  # noqa: E402
from detr_plugin.models.necks.hybrid_encoder import DFineHybridEncoder  # noqa: E402

# configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml over include/dfine_hgnetv2.yml; the arguments
# left out are the defaults: num_heads 8, ffn_dims 1024, dropout 0, enc_act 'gelu',
# encoder_levels (2,), num_encoder_layers 1, pe_temperature 10000, expansion 1, depth_mult 1,
# act 'silu'
ENCODERS = dict(
    n=dict(in_channels=[512, 1024], embed_dims=128, ffn_dims=512, encoder_levels=[1],
           expansion=0.34, depth_mult=0.5),
    s=dict(in_channels=[256, 512, 1024], embed_dims=256, expansion=0.5, depth_mult=0.34),
    m=dict(in_channels=[384, 768, 1536], embed_dims=256, depth_mult=0.67),
    l=dict(in_channels=[512, 1024, 2048], embed_dims=256),
    x=dict(in_channels=[512, 1024, 2048], embed_dims=384, ffn_dims=2048),
)


def max_diff(ours, theirs) -> float:
    if len(ours) != len(theirs):
        raise ValueError(f'{len(ours)} output levels, the original has {len(theirs)}')
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@torch.no_grad()
def run(encoder: torch.nn.Module, inputs, training: bool):
    encoder.train(training)
    return encoder(inputs)


def compare(encoder: DFineHybridEncoder, ref: dict, mode: str, atol: float,
            atol64: float) -> Tuple[bool, str]:
    """(passed, one line of figures) for ``mode`` 'eval' or 'train'.

    float64 must agree to ``atol64``; float32 must agree to ``atol`` or, where the original's own
    float32 result is farther than that from its float64 one, ours must be no farther from the
    original's float64 result than twice that distance."""
    training = mode == 'train'
    state = copy.deepcopy(encoder.state_dict())  # each pass starts from the same statistics
    ours32 = run(encoder, ref['inputs'], training)
    encoder.load_state_dict(state)
    ours64 = run(encoder.double(), [x.double() for x in ref['inputs']], training)
    encoder.float().load_state_dict(state)
    diff32, diff64 = max_diff(ours32, ref[mode]), max_diff(ours64, ref[mode + '64'])
    theirs_err = max_diff([o.double() for o in ref[mode]], ref[mode + '64'])
    ours_err = max_diff([o.double() for o in ours32], ref[mode + '64'])
    passed = diff64 <= atol64 and (diff32 <= atol or ours_err <= 2 * theirs_err)
    return passed, (f'{mode}: float32 {diff32:.2e} (float32 error: ours {ours_err:.2e}, the '
                    f'original\'s {theirs_err:.2e}), float64 {diff64:.2e}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('reference', help='file written by dfine_encoder_parity_reference.py')
    parser.add_argument('--atol', type=float, default=1e-5, help='float32 tolerance')
    parser.add_argument('--atol64', type=float, default=1e-10, help='float64 tolerance')
    args = parser.parse_args()

    reference = torch.load(args.reference, map_location='cpu', weights_only=False)
    failed = False
    for size, ref in reference['sizes'].items():
        encoder = DFineHybridEncoder(**ENCODERS[size])
        weights = convert_dfine_encoder({f'encoder.{k}': v for k, v in ref['state_dict'].items()})
        encoder.load_state_dict({k[len('neck.'):]: v for k, v in weights.items()}, strict=True)
        params = sum(p.numel() for p in encoder.parameters())
        lines = []
        for mode in ('eval', 'train'):
            passed, line = compare(encoder, ref, mode, args.atol, args.atol64)
            failed |= not passed
            lines.append(f'{line} {"PASS" if passed else "FAIL"}')
        print(f'{size.upper()} ({params} parameters): ' + '; '.join(lines))
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
