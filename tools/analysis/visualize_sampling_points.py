"""Draws where multi-scale deformable attention samples: for decoder queries and encoder pixels.

    python tools/analysis/visualize_sampling_points.py CONFIG CKPT IMG [--query Q ...] [--top 3]
        [--layer L] [--encoder-pixel X Y] [--out-dir DIR] [--device cpu] [--trust-checkpoint]

For each chosen decoder query (default: the ``--top`` queries of highest class score, the
sources of the top detections) one PNG shows, on the original image, the query's reference point
(and reference box, when the reference is a box), its sampling locations in decoder layer ``L``
(default: the last layer run at inference), one colour and marker per feature level, with marker
area proportional to the attention weight (each head's weights sum to 1; the legend gives each
level's share), and the query's detection (its box and best class score, from the detector's
output layer). ``--encoder-pixel X Y``
adds the same picture for the encoder token of the finest level whose cell holds pixel (X, Y)
(Deformable DETR only: RT-DETR's encoder has no deformable attention). A JSON file beside each PNG
holds the plotted numbers. Works for Deformable DETR (plain, refine, two-stage), RT-DETR and
RT-DETRv2 (also with a different point count per level, e.g. ``num_points=[3, 6, 3]``).

The locations are the ones the model uses: a forward hook on each attention module's
``sampling_points`` records what the op receives. They are normalized to [0, 1] of each level's
padded map; every level map spans the padded network input (``batch_input_shape`` (H_pad, W_pad);
exact when W_pad and H_pad are multiples of the level's stride, else within one stride). In
Deformable DETR the decoder's references are defined on the valid (unpadded) image and scaled by
each level's valid ratio before attention, so they are already in this padded frame; RT-DETR has
no padding mask and attends over the whole padded input (its COCO configs resize to 640 x 640, so
there is no padding). So (x, y) maps to the network input's
pixels (x * W_pad, y * H_pad), and to the original image's by undoing the test pipeline's resize:
division by the data sample's ``scale_factor`` (w_scale, h_scale). Pixel coordinates here are
continuous, as mmdet's boxes: the image spans [0, W] x [0, H], pixel (i, j) is centred at
(j + 0.5, i + 0.5).
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from mmcv.transforms import Compose  # noqa: E402
from mmdet.utils import get_test_pipeline_cfg  # noqa: E402
from mmengine.config import Config  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from detr_plugin.ops import MultiScaleDeformableAttention  # noqa: E402
from detr_plugin.utils import (TRUST_OPTION, CheckpointError, build_detector,  # noqa: E402
                               load_weights)

# colour and marker of every level: apart from the demo data's red, green and blue shapes
LEVEL_STYLES = [('magenta', 'o'), ('cyan', 's'), ('orange', '^'), ('white', 'D'), ('black', 'v'),
                ('purple', 'P')]
MARKER_AREA = 400.0  # points^2 of a sampling point with attention weight 1


class VisualizeError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class Sampling(NamedTuple):
    """What one attention module's ``sampling_points`` saw and gave, for one forward."""
    reference_points: Tensor  # (bs, Q, L or 1, 2 | 4) normalized to the padded level maps
    locations: Tensor         # (bs, Q, heads, L, P, 2) as (x, y), same frame; with a point
                              # count per level (P_0, ..., P_{L-1}): (bs, Q, heads, sum(P_l), 2)
    weights: Tensor           # locations without the last dimension
    spatial_shapes: Tensor    # (L, 2) as (H_l, W_l)
    level_points: Tuple[int, ...]  # (P_0, ..., P_{L-1})


class SamplingPicture(NamedTuple):
    """The numbers of one picture, in continuous pixels (x, y) of the original image."""
    title: str
    query: int                             # index of the query (decoder) or token (encoder)
    points: List[np.ndarray]               # per level l: (heads, P_l, 2) sampling locations
    weights: List[np.ndarray]              # per level l: (heads, P_l) attention weights; each
                                           # head's sum over all levels is 1
    reference: np.ndarray                  # (2,) reference point
    reference_box: Optional[np.ndarray]    # (4,) xyxy when the reference is a box, else None
    box: Optional[np.ndarray]              # (4,) xyxy predicted box (decoder queries), else None
    score: Optional[float]                 # its best class score
    level_shapes: List[Tuple[int, int]]    # (H_l, W_l) of every level
    out_file: str                          # the PNG; the JSON has the same name


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw the sampling points of deformable attention')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('img', help='image file')
    parser.add_argument('--query', type=int, nargs='+', help='decoder query indices to draw '
                        '(default: the --top queries of highest class score)')
    parser.add_argument('--top', type=int, default=3, help='how many top queries without --query')
    parser.add_argument('--layer', type=int, help='decoder (and encoder) layer, from 0; negative '
                        'counts from the end (default: the last layer run at inference)')
    parser.add_argument('--encoder-pixel', type=float, nargs=2, metavar=('X', 'Y'),
                        help='also draw the encoder token at this pixel of the original image')
    parser.add_argument('--out-dir', default='sampling_points', help='folder for the PNG files')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument(TRUST_OPTION, action='store_true',
                        help='read the checkpoint with full unpickling, which can run code: only '
                        'for files you trust (by default only weights are read)')
    return parser.parse_args(argv)


# ------------------------------------------------------------------ model and its attention
def build_model(cfg: Config, checkpoint: str, device: str, trust: bool = False) -> nn.Module:
    """The detector with the checkpoint's weights, in eval mode, class names in ``dataset_meta``;
    only one with deformable attention in its decoder."""
    model = build_detector(cfg)
    if not attention_layers(model, 'decoder'):
        raise VisualizeError(f'the model of {cfg.filename!r} ({type(model).__name__}) has no '
                             'MultiScaleDeformableAttention in its decoder: this tool is for '
                             'Deformable DETR and RT-DETR')
    try:
        return load_weights(model, checkpoint, device, trust=trust)
    except CheckpointError as error:
        raise VisualizeError(str(error)) from None


def attention_layers(model: nn.Module, part: str) -> List[MultiScaleDeformableAttention]:
    """The deformable attention modules of ``model.<part>`` ('encoder' or 'decoder'), one per
    layer in order; empty when the model has no such part or it has no deformable attention."""
    stack = getattr(model, part, None)
    if not isinstance(stack, nn.Module):
        return []
    return [m for m in stack.modules() if isinstance(m, MultiScaleDeformableAttention)]


@contextlib.contextmanager
def record_sampling(layers: List[MultiScaleDeformableAttention]) -> Iterator[Dict[int, Sampling]]:
    """Within the block, ``records[i]`` is the last :class:`Sampling` of ``layers[i]``; layers
    that did not run have no entry."""
    records: Dict[int, Sampling] = {}

    def hook(index: int):
        def save(module, args, output):
            reference_points, _, _, spatial_shapes = args
            records[index] = Sampling(reference_points.detach().cpu(), output[0].detach().cpu(),
                                      output[1].detach().cpu(), spatial_shapes.cpu(),
                                      module.level_points)
        return save

    handles = [attn.sampling_points.register_forward_hook(hook(i)) for i, attn in enumerate(layers)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def pick_layer(records: Dict[int, Sampling], layer: Optional[int], part: str) -> int:
    """The recorded layer ``layer`` (negative: from the end; None: the last one run)."""
    ran = len(records)
    if layer is None:
        return ran - 1
    if not -ran <= layer < ran:
        raise VisualizeError(f'--layer {layer} is out of range: the {part} runs {ran} deformable '
                             f'attention layers at inference (0..{ran - 1})')
    return layer % ran


# ------------------------------------------------------------------------- coordinates
def to_image_pixels(normalized: Tensor, metainfo: dict) -> np.ndarray:
    """(..., 2) (x, y) normalized to the padded input -> (..., 2) pixels of the original image."""
    h_pad, w_pad = metainfo['batch_input_shape']
    w_scale, h_scale = metainfo['scale_factor']
    scale = normalized.new_tensor([w_pad / w_scale, h_pad / h_scale], dtype=torch.float64)
    return (normalized.double() * scale).numpy()


def reference_in_pixels(reference: Tensor,
                        metainfo: dict) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """One query's reference (L or 1, 2 | 4) -> its point (2,) and, for a box, its xyxy (4,), in
    pixels of the original image (the first level's: all levels hold the same point)."""
    first = reference[0]
    centre = to_image_pixels(first[:2], metainfo)
    if first.shape[0] == 2:
        return centre, None
    half = to_image_pixels(first[2:], metainfo) / 2
    return centre, np.concatenate([centre - half, centre + half])


# ------------------------------------------------------------------------------ pictures
def decoder_pictures(model: nn.Module, sampling: Sampling, logits: Tensor, boxes: Tensor,
                     metainfo: dict, queries: Optional[List[int]], top: int, layer: int,
                     stem: str) -> List[SamplingPicture]:
    """One picture per query, from the sampling of decoder layer ``layer``.

    logits (Q, K) and boxes (Q, 4) cxcywh of the predicting layer, normalized to ``img_shape``.
    """
    scores, labels = logits.sigmoid().max(-1)  # (Q,) best class of every query
    num_queries = scores.shape[0]
    if queries is None:
        queries = scores.topk(min(top, num_queries)).indices.tolist()
    bad = [q for q in queries if not 0 <= q < num_queries]
    if bad:
        raise VisualizeError(f'--query {bad} out of range: the model has {num_queries} queries')
    pixel_boxes = model.bbox_head.to_pixels(boxes[queries].float(), metainfo, rescale=True)
    classes = model.dataset_meta.get('classes')
    pictures = []
    for q, box in zip(queries, pixel_boxes):
        label = int(labels[q])
        name = classes[label] if classes and label < len(classes) else f'class {label}'
        title = f'decoder layer {layer}, query {q}: {name} {float(scores[q]):.2f}'
        pictures.append(picture(sampling, q, metainfo, title, box.numpy().astype(np.float64),
                                float(scores[q]), f'{stem}_decoder-layer{layer}_query{q}'))
    return pictures


def encoder_picture(sampling: Sampling, pixel: Sequence[float], metainfo: dict, layer: int,
                    stem: str) -> SamplingPicture:
    """The picture of the finest level's encoder token whose cell holds ``pixel`` (x, y) of the
    original image."""
    x, y = pixel
    w_scale, h_scale = metainfo['scale_factor']
    img_h, img_w = metainfo['img_shape'][:2]
    x_in, y_in = x * w_scale, y * h_scale  # in the network input
    if not (0 <= x_in < img_w and 0 <= y_in < img_h):
        ori_h, ori_w = metainfo['ori_shape'][:2]
        raise VisualizeError(f'--encoder-pixel {x:g} {y:g} is outside the image '
                             f'({ori_w} x {ori_h})')
    h_pad, w_pad = metainfo['batch_input_shape']
    height, width = sampling.spatial_shapes[0].tolist()
    row, col = int(y_in / h_pad * height), int(x_in / w_pad * width)
    token = row * width + col  # level 0 starts the token sequence
    title = f'encoder layer {layer}, pixel ({x:g}, {y:g}): level 0 token (row {row}, col {col})'
    return picture(sampling, token, metainfo, title, None, None,
                   f'{stem}_encoder-layer{layer}_x{x:g}_y{y:g}')


def picture(sampling: Sampling, query: int, metainfo: dict, title: str, box: Optional[np.ndarray],
            score: Optional[float], name: str) -> SamplingPicture:
    """The numbers of query (or token) ``query`` of the recorded sampling, in image pixels."""
    reference, reference_box = reference_in_pixels(sampling.reference_points[0, query], metainfo)
    locations = per_level(sampling.locations[0, query], sampling.level_points)
    weights = per_level(sampling.weights[0, query], sampling.level_points)
    return SamplingPicture(
        title=title, query=query,
        points=[to_image_pixels(level, metainfo) for level in locations],
        weights=[level.double().numpy() for level in weights],
        reference=reference, reference_box=reference_box, box=box, score=score,
        level_shapes=[tuple(s) for s in sampling.spatial_shapes.tolist()], out_file=name + '.png')


def per_level(values: Tensor, level_points: Tuple[int, ...]) -> List[Tensor]:
    """(heads, L, P, ...) or, with a point count per level, (heads, sum(P_l), ...) -> per level
    l: (heads, P_l, ...)."""
    if len(set(level_points)) == 1:  # the same count on every level: a level dimension
        return list(values.unbind(1))
    return list(values.split(list(level_points), dim=1))


def draw(image: np.ndarray, pic: SamplingPicture) -> Figure:
    """The image (H, W, 3) RGB with the picture's points: one scatter per level, labelled
    ``level l ...``, marker area ``MARKER_AREA * weight``."""
    height, width = image.shape[:2]
    figure, axis = plt.subplots(figsize=(6, 6 * height / width + 1.2))
    axis.imshow(image, extent=(0, width, height, 0), interpolation='nearest')
    num_heads = pic.weights[0].shape[0]
    for level, ((h, w), points, weights) in enumerate(zip(pic.level_shapes, pic.points,
                                                           pic.weights)):
        colour, marker = LEVEL_STYLES[level % len(LEVEL_STYLES)]
        share = weights.sum() / num_heads
        axis.scatter(points[..., 0].ravel(), points[..., 1].ravel(),
                     s=MARKER_AREA * weights.ravel(), c=colour, marker=marker,
                     alpha=0.75, edgecolors='black', linewidths=0.4,
                     label=f'level {level} ({h}x{w}): {share:.0%} of the weight')
    if pic.reference_box is not None:
        axis.add_patch(box_patch(pic.reference_box, 'black', '--', 'reference box'))
    if pic.box is not None:
        axis.add_patch(box_patch(pic.box, 'yellow', '-', 'detection (final layer)'))
    axis.scatter(*pic.reference, s=160, c='black', marker='X', edgecolors='white',
                 linewidths=1.0, label='reference point')
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_axis_off()
    axis.set_title(pic.title, fontsize=10)
    axis.legend(loc='upper center', bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=8,
                frameon=False)
    figure.tight_layout()
    return figure


def box_patch(xyxy: np.ndarray, colour: str, style: str, label: str) -> Rectangle:
    x0, y0, x1, y1 = xyxy
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=style,
                     linewidth=1.5, label=label)


def to_json(value):
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value.tolist() if isinstance(value, np.ndarray) else value


def save(image: np.ndarray, pic: SamplingPicture) -> None:
    """Writes the PNG and, beside it, a JSON of its numbers."""
    figure = draw(image, pic)
    figure.savefig(pic.out_file, dpi=80)
    plt.close(figure)
    numbers = {k: to_json(v) for k, v in pic._asdict().items()}
    with open(osp.splitext(pic.out_file)[0] + '.json', 'w') as file:
        json.dump(numbers, file)


# -------------------------------------------------------------------------------- main
def load_inputs(cfg: Config, img: str, model: nn.Module) -> Tuple[Tensor, list]:
    """The image through the config's test pipeline and the model's data preprocessor."""
    pipeline = Compose(get_test_pipeline_cfg(cfg))
    data = pipeline(dict(img_path=img, img_id=0))
    data = model.data_preprocessor(dict(inputs=[data['inputs']],
                                        data_samples=[data['data_samples']]), False)
    return data['inputs'], data['data_samples']


def main(argv=None) -> List[SamplingPicture]:
    args = parse_args(argv)
    image = mmcv.imread(args.img) if osp.isfile(args.img) else None  # (H, W, 3) BGR
    if image is None:
        raise VisualizeError(f'cannot read image {args.img!r}')
    image = mmcv.bgr2rgb(image)
    if not osp.isfile(args.config):
        raise VisualizeError(f'config {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    model = build_model(cfg, args.checkpoint, args.device, args.trust_checkpoint)
    decoder = attention_layers(model, 'decoder')
    encoder = attention_layers(model, 'encoder') if args.encoder_pixel else []
    if args.encoder_pixel and not encoder:
        raise VisualizeError(f'--encoder-pixel needs a deformable encoder: {type(model).__name__} '
                             'has no MultiScaleDeformableAttention in its encoder')
    inputs, samples = load_inputs(cfg, args.img, model)
    with torch.no_grad(), record_sampling(decoder) as dec, record_sampling(encoder) as enc:
        logits, boxes = model(inputs, samples, mode='tensor')  # (L', 1, Q, K), (L', 1, Q, 4)
    metainfo = samples[0].metainfo
    stem = osp.join(args.out_dir, osp.splitext(osp.basename(args.img))[0])
    layer = pick_layer(dec, args.layer, 'decoder')
    pictures = decoder_pictures(model, dec[layer], logits[-1, 0].cpu(), boxes[-1, 0].cpu(),
                                metainfo, args.query, args.top, layer, stem)
    if args.encoder_pixel:
        layer = pick_layer(enc, args.layer, 'encoder')
        pictures.append(encoder_picture(enc[layer], args.encoder_pixel, metainfo, layer, stem))
    os.makedirs(args.out_dir, exist_ok=True)
    for pic in pictures:
        save(image, pic)
    print(f'wrote {len(pictures)} picture(s) to {args.out_dir}')
    return pictures


if __name__ == '__main__':
    try:
        main()
    except VisualizeError as error:
        sys.exit(f'error: {error}')
