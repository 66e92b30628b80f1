"""RT-DETR: DETRs Beat YOLOs on Real-time Object Detection (Zhao et al., CVPR 2024)."""
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.structures import SampleList
from torch import Tensor

from detr_plugin.registry import MODELS, build_in_scope
from ..dense_heads.detr_head import GroundTruth
from ..layers.denoising import ContrastiveDenoising
from ..layers.predictions import DetectionOutputs
from ..layers.sync_batch_norm import SyncBatchNorm2d
from ..layers.training_graphs import TrainingGraphs


@MODELS.register_module()
class RTDETR(BaseDetector):
    """Backbone (strides 8/16/32) -> hybrid encoder -> query selection + decoder -> head.

    Args:
        backbone: e.g. ``ResNetVd`` with ``out_indices=(1, 2, 3)``.
        neck: ``HybridEncoder`` config.
        decoder: ``RTDETRDecoder`` config.
        bbox_head: ``RTDETRHead`` config (with ``eval_idx``); receives ``num_pred_layers`` from
            the decoder and ``train_cfg`` / ``test_cfg``.
        denoising: ``ContrastiveDenoising`` arguments (num_denoising, label_noise_ratio,
            box_noise_scale), or None to train without denoising queries.
        sync_bn: normalise every ``BatchNorm2d`` (the encoder's; a trainable backbone's) over
            the global batch in distributed training, as the original does, with
            :class:`SyncBatchNorm2d` (no host synchronisation, unlike ``nn.SyncBatchNorm``).
            The same as BatchNorm on one process and in eval mode.
        channels_last: keep every convolution (backbone, hybrid encoder, decoder input
            projections) and the input batch in ``torch.channels_last`` memory layout, so that on
            the GPU cuDNN runs its NHWC kernels (BatchNorm included) without a layout transpose
            around each convolution. The same computation in another layout (float rounding
            aside): checkpoints load in either direction, EMA copies keep the layout, and the
            flattened levels are (bs, H * W, C) contiguous as before. Off by default; set it with
            ``--cfg-options model.channels_last=True``. Not yet for several processes with
            ``sync_bn``: :class:`SyncBatchNorm2d` then copies its input to the default layout.
            :func:`fuse_for_inference` makes new convolutions in the default layout;
            ``End2EndDetector(channels_last=True)`` converts them again.
        cuda_graph: in a CUDA training step, run the backbone and the hybrid encoder (forward
            and backward) as CUDA graphs captured once per input shape (:class:`TrainingGraphs`):
            a few thousand kernel launches per step become two, for the host-bound step of a
            small model on a fast GPU. The same gradients as eager training (float rounding
            aside); the first step at each new size runs an extra warm-up and capture. The
            graphs' memory pool holds the activations of the largest size seen, on top of what
            eager training keeps. Off by default; ``--cfg-options model.cuda_graph=True``. Not
            with ``sync_bn`` across processes (one-line error).
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 decoder: dict,
                 bbox_head: dict,
                 denoising: Optional[dict] = dict(num_denoising=100, label_noise_ratio=0.5,
                                                  box_noise_scale=1.0),
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 sync_bn: bool = False,
                 channels_last: bool = False,
                 cuda_graph: bool = False) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = build_in_scope(MODELS, backbone)
        self.neck = build_in_scope(MODELS, neck)
        self.decoder = build_in_scope(MODELS, decoder)
        self.bbox_head = build_in_scope(MODELS, dict(
            bbox_head, num_pred_layers=self.decoder.num_layers, train_cfg=train_cfg,
            test_cfg=test_cfg))
        if self.bbox_head.embed_dims != self.decoder.embed_dims:
            raise ValueError(f'bbox_head embed_dims={self.bbox_head.embed_dims} differs from the '
                             f'decoder embed_dims={self.decoder.embed_dims}')
        self.denoising = (ContrastiveDenoising(self.bbox_head.num_classes, self.decoder.embed_dims,
                                               **denoising) if denoising else None)
        if sync_bn:
            SyncBatchNorm2d.convert(self)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # the 4-D tensors: conv weights
        self.training_graphs = TrainingGraphs() if cuda_graph else None

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """(bs, 3, H, W) -> the hybrid encoder's levels (bs, C, H / s, W / s), s = 8, 16, 32."""
        if self.channels_last:
            batch_inputs = batch_inputs.contiguous(memory_format=torch.channels_last)
        if self.training_graphs is not None:
            return self.training_graphs((self.backbone, self.neck), batch_inputs)
        return self.neck(self.backbone(batch_inputs))

    def forward_transformer(self, feats: Tuple[Tensor, ...],
                            gt: Optional[GroundTruth] = None) -> DetectionOutputs:
        """Query selection and decoding; in training, denoising queries are made from ``gt``
        when it is given."""
        groups = None
        if self.training and self.denoising is not None and gt is not None:
            groups = self.denoising(gt.labels, gt.boxes, self.decoder.num_queries)
        return self.decoder(feats, self.bbox_head, groups)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        gt = self.bbox_head.ground_truth(batch_data_samples, batch_inputs)  # float32 under AMP
        outputs = self.forward_transformer(self.extract_feat(batch_inputs), gt)
        return self.bbox_head.loss(outputs, gt)

    def parse_losses(self, losses: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """mmengine's total loss and logged values (each term's mean; the total sums the terms
        whose name holds 'loss'), with a few kernels for all terms instead of a few per term:
        the total is one sum of the stacked terms (the same gradients as mmengine's left-to-right
        sum; its value may differ in the last bits) and the logged values reach the host in one
        copy (:func:`logged_on_host`)."""
        terms = OrderedDict((name, term_mean(name, value)) for name, value in losses.items())
        summed = [value for name, value in terms.items() if 'loss' in name]
        if not summed:
            raise ValueError(f'parse_losses: no term named *loss* among {list(terms)}')
        total = torch.stack(summed).sum()
        return total, logged_on_host(OrderedDict([('loss', total), *terms.items()]))

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        outputs = self.forward_transformer(self.extract_feat(batch_inputs))
        results = self.bbox_head.predict(outputs, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: Optional[SampleList] = None) -> Tuple[Tensor, Tensor]:
        """Raw logits (L', bs, Q, K) and boxes (L', bs, Q, 4): every layer in training mode
        (without denoising), the ``eval_idx`` layer in eval mode."""
        outputs = self.forward_transformer(self.extract_feat(batch_inputs))
        return outputs.logits, outputs.boxes


def term_mean(name: str, value) -> Tensor:
    """A loss term as mmengine logs it: a tensor's mean (a 0-d one as it is), the sum of the
    means of a list of tensors."""
    if isinstance(value, Tensor):
        return value if value.dim() == 0 else value.mean()
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        return sum(v.mean() for v in value)
    raise TypeError(f'parse_losses: {name} is not a tensor or list of tensors')


def logged_on_host(log_vars: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The same 0-d values, detached, on the host after one device-to-host copy.

    mmengine's logging reads every value with ``.item()`` after the step: a host wait per term
    (about 40 for RT-DETR). One copy of them all is one wait, right after the forward.
    """
    values = torch.stack([value.detach() for value in log_vars.values()]).cpu()
    return OrderedDict(zip(log_vars, values.unbind()))
