"""Converts an rtdetr_pytorch (RT-DETR v1, lyuwenyu/RT-DETR) checkpoint to a detr_plugin one.

    python tools/model_converters/rtdetr_to_plugin.py SRC.pth DST.pth [--no-ema]

SRC may be a training checkpoint (``{'model': ..., 'ema': {'module': ...}}``; the EMA weights are
taken unless --no-ema, as the released checkpoints are evaluated with them), or a bare state dict,
e.g. a PResNet ImageNet checkpoint (backbone keys only, then converted under ``backbone.``).
DST is an mmengine checkpoint ``{'state_dict': ..., 'meta': ...}`` for the configs in
configs/rtdetr/ (load it with ``load_from`` or tools/test.py).

Key map (original -> ours):
    backbone.conv1.conv1_{1,2,3}.{conv,norm}        backbone.stem.{0,1 | 3,4 | 6,7}
    backbone.res_layers.S.blocks.B.branch2{a,b,c}    backbone.layer{S+1}.B.{conv,bn}{1,2,3}
    ...short.{conv,norm} | short.conv.{conv,norm}    ...downsample.{1,2}  (0: the pool)
    encoder.*                                        neck.*  (linear1/2 -> ffn.linear1/2)
    decoder.decoder.layers.*                         decoder.layers.*  (linear1/2 -> ffn.*)
    decoder.{input_proj,enc_output,query_pos_head}   unchanged under decoder.
    decoder.dec_score_head.i / dec_bbox_head.i       bbox_head.cls_branches.i / reg_branches.i
    decoder.enc_score_head / enc_bbox_head           bbox_head.enc_cls_branch / enc_reg_branch
    decoder.denoising_class_embed                    denoising.label_embed
Frozen BatchNorms have no ``num_batches_tracked``; a zero one is added for mmdet's BatchNorm.
"""
import argparse
import re
from collections import OrderedDict
from typing import Callable, Dict, Tuple

import torch

# (pattern, replacement) tried in order on the full key; the first that matches wins
_STEM = {'conv1_1': (0, 1), 'conv1_2': (3, 4), 'conv1_3': (6, 7)}
_BRANCH = {'branch2a': '1', 'branch2b': '2', 'branch2c': '3'}
_RULES: Tuple[Tuple[str, Callable[[re.Match], str]], ...] = (
    # backbone
    (r'^backbone\.conv1\.(conv1_\d)\.conv\.', lambda m: f'backbone.stem.{_STEM[m[1]][0]}.'),
    (r'^backbone\.conv1\.(conv1_\d)\.norm\.', lambda m: f'backbone.stem.{_STEM[m[1]][1]}.'),
    (r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.(branch2[abc])\.conv\.',
     lambda m: f'backbone.layer{int(m[1]) + 1}.{m[2]}.conv{_BRANCH[m[3]]}.'),
    (r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.(branch2[abc])\.norm\.',
     lambda m: f'backbone.layer{int(m[1]) + 1}.{m[2]}.bn{_BRANCH[m[3]]}.'),
    (r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.conv\.',  # pooled shortcut
     lambda m: f'backbone.layer{int(m[1]) + 1}.{m[2]}.downsample.1.'),
    (r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.norm\.',
     lambda m: f'backbone.layer{int(m[1]) + 1}.{m[2]}.downsample.2.'),
    (r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.conv\.',  # stride-1 shortcut
     lambda m: f'backbone.layer{int(m[1]) + 1}.{m[2]}.downsample.1.'),
    (r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.short\.norm\.',
     lambda m: f'backbone.layer{int(m[1]) + 1}.{m[2]}.downsample.2.'),
    # hybrid encoder
    (r'^encoder\.encoder\.(\d+)\.layers\.(\d+)\.(linear[12])\.',
     lambda m: f'neck.encoder.{m[1]}.layers.{m[2]}.ffn.{m[3]}.'),
    (r'^encoder\.', lambda m: 'neck.'),
    # decoder
    (r'^decoder\.decoder\.layers\.(\d+)\.(linear[12])\.',
     lambda m: f'decoder.layers.{m[1]}.ffn.{m[2]}.'),
    (r'^decoder\.decoder\.layers\.', lambda m: 'decoder.layers.'),
    (r'^decoder\.dec_score_head\.', lambda m: 'bbox_head.cls_branches.'),
    (r'^decoder\.dec_bbox_head\.', lambda m: 'bbox_head.reg_branches.'),
    (r'^decoder\.enc_score_head\.', lambda m: 'bbox_head.enc_cls_branch.'),
    (r'^decoder\.enc_bbox_head\.', lambda m: 'bbox_head.enc_reg_branch.'),
    (r'^decoder\.denoising_class_embed\.', lambda m: 'denoising.label_embed.'),
    (r'^decoder\.(input_proj|enc_output|query_pos_head)\.', lambda m: f'decoder.{m[1]}.'),
)
# buffers the original recomputes and we do not store
_DROPPED = re.compile(r'^encoder\.pos_embed\d+$|^decoder\.(anchors|valid_mask)$')


def convert_key(key: str) -> str:
    """One original key -> ours; raises KeyError for a key no rule covers."""
    for pattern, replace in _RULES:
        new, count = re.subn(pattern, replace, key, count=1)
        if count:
            return new
    raise KeyError(f'no conversion rule for the key {key!r}')


def convert_state_dict(state: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Original RT-DETR state dict (or a bare PResNet one) -> detr_plugin ``RTDETR`` state dict."""
    if not any(k.startswith(('backbone.', 'encoder.', 'decoder.')) for k in state):
        state = {f'backbone.{k}': v for k, v in state.items()}  # a PResNet checkpoint
    converted = OrderedDict()
    for key, value in state.items():
        if _DROPPED.match(key):
            continue
        converted[convert_key(key)] = value
    for key in list(converted):  # frozen BN -> mmdet BN
        if key.startswith('backbone.') and key.endswith('.running_var'):
            tracked = key[:-len('running_var')] + 'num_batches_tracked'
            converted.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return converted


def model_state(checkpoint: dict, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The model weights inside an rtdetr_pytorch checkpoint (EMA ones first if asked)."""
    if use_ema and isinstance(checkpoint.get('ema'), dict) and 'module' in checkpoint['ema']:
        return checkpoint['ema']['module']
    if 'model' in checkpoint:
        return checkpoint['model']
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f"no 'ema.module' or 'model' weights in the checkpoint (keys: "
                     f'{sorted(checkpoint)[:10]})')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='rtdetr_pytorch checkpoint')
    parser.add_argument('dst', help='output detr_plugin checkpoint')
    parser.add_argument('--no-ema', action='store_true', help="take 'model' rather than 'ema'")
    args = parser.parse_args()
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=False)
    state = convert_state_dict(model_state(checkpoint, use_ema=not args.no_ema))
    torch.save(dict(state_dict=state, meta=dict(converted_from=args.src)), args.dst)
    print(f'wrote {len(state)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
