"""Contrastive denoising groups of RT-DETR / DINO (Zhang et al. 2023, Sec. 3.3), training only.

Every gt box enters the decoder twice per group as a noised query: a *positive* copy with box noise
below half the box size (it must reconstruct its gt) and a *negative* copy with noise between half
and the full box size (it must predict "no object"). Labels are flipped to a random class with
probability ``label_noise_ratio / 2``. Images are padded to the batch's largest gt count ``M``; a
group is ``[M positives, M negatives]`` and there are ``max(1, num_denoising // M)`` groups.

Padding queries (images with fewer than M gts) carry the label embedding's padding row (zero,
never trained) and an all-zero box, and are negatives. A batch without any gt still gets one group
of padding queries (M = 1, box ``EMPTY_BATCH_BOX``), so that every rank of a distributed run
executes the same modules (the original skipped denoising there, and DDP hung).
"""
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..task_modules.box_transforms import cxcywh_to_xyxy, xyxy_to_cxcywh

# box of the padding queries of a batch without gts: any valid box (cxcywh, normalized)
EMPTY_BATCH_BOX = (0.5, 0.5, 0.1, 0.1)


class DenoisingGroups(NamedTuple):
    """The denoising queries of a batch (bs images, D = 2 * M * num_groups queries each)."""
    query: Tensor           # (bs, D, C) label embeddings of the noised labels
    ref_boxes_unact: Tensor  # (bs, D, 4) noised gt boxes, cxcywh, inverse-sigmoid
    attn_mask: Tensor       # (D + Q, D + Q) bool, True = blocked, for [denoising, matching] queries
    num_groups: int
    pred_index: Tensor      # (P,) positive queries as flat indices into (bs, D)
    gt_index: Tensor        # (P,) their gts as indices into the batch's concatenated gts


def denoising_attn_mask(max_gts: int, num_groups: int, num_queries: int,
                        device=None) -> Tensor:
    """(D + Q, D + Q) bool, True where attention is blocked; queries ordered [denoising, matching].

    The matching queries must not see any denoising query (that would leak the gts); a denoising
    group sees itself and the matching queries but no other group.
    """
    num_dn = 2 * max_gts * num_groups
    group = torch.arange(num_dn + num_queries, device=device) // (2 * max_gts)  # (D + Q,)
    is_dn = torch.arange(num_dn + num_queries, device=device) < num_dn
    different_group = group[:, None] != group[None, :]
    # a key that is a denoising query is blocked for other groups and for the matching queries
    return is_dn[None, :] & (different_group | ~is_dn[:, None])


class ContrastiveDenoising(nn.Module):
    """Builds the denoising queries from the gts of a batch.

    Args:
        num_classes: object classes; the label embedding has one more (padding) row.
        embed_dims: width of the query embeddings.
        num_denoising: target number of denoising queries per image (2 * M * num_groups may
            differ: groups are whole).
        label_noise_ratio: twice the probability that a query's label is replaced by a random one.
        box_noise_scale: box noise relative to the box size (positives below half, negatives
            between half and one time ``box_noise_scale`` times the box size).
        absolute_sizes: D-FINE: a noised box whose corners crossed keeps its width / height as
            a positive size (RT-DETR: the negative size, clamped by the inverse sigmoid).
    """

    def __init__(self, num_classes: int, embed_dims: int = 256, num_denoising: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 absolute_sizes: bool = False) -> None:
        super().__init__()
        if num_denoising <= 0:
            raise ValueError(f'num_denoising must be positive, got {num_denoising}; '
                             'build no ContrastiveDenoising to train without denoising')
        self.num_classes = num_classes
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.absolute_sizes = absolute_sizes
        self.label_embed = nn.Embedding(num_classes + 1, embed_dims, padding_idx=num_classes)

    def forward(self, gt_labels: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                num_queries: int) -> DenoisingGroups:
        """
        Args:
            gt_labels: bs tensors (G_b,) long, in [0, num_classes).
            gt_boxes: bs tensors (G_b, 4) cxcywh, normalized; G_b may be 0 for any or all images.
            num_queries: number Q of matching queries that follow the denoising ones.
        """
        device = self.label_embed.weight.device
        num_gts = [len(labels) for labels in gt_labels]
        max_gts = max(max(num_gts), 1)
        num_groups = max(self.num_denoising // max_gts, 1) if sum(num_gts) else 1
        labels, boxes = self._pad_to_batch(gt_labels, gt_boxes, max_gts, device)
        real = labels != self.num_classes  # (bs, M) the real gts (labels < num_classes)
        # repeat [positive, negative] for every group: (bs, D)
        repeats = 2 * num_groups
        labels, is_gt = labels.repeat(1, repeats), real.repeat(1, repeats)
        boxes = boxes.repeat(1, repeats, 1)  # (bs, D, 4)
        is_negative = (torch.arange(labels.shape[1], device=device) // max_gts) % 2 == 1  # (D,)
        labels = self._noise_labels(labels, is_gt)
        boxes_unact = self._noise_boxes(boxes, is_negative)
        pred_index, gt_index = self._positive_indices(real, sum(num_gts), num_groups)
        return DenoisingGroups(
            query=self.label_embed(labels),
            ref_boxes_unact=boxes_unact,
            attn_mask=denoising_attn_mask(max_gts, num_groups, num_queries, device),
            num_groups=num_groups,
            pred_index=pred_index,
            gt_index=gt_index)

    def _pad_to_batch(self, gt_labels: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                      max_gts: int, device) -> tuple:
        """(bs, M) labels (padding: num_classes) and (bs, M, 4) boxes."""
        bs = len(gt_labels)
        labels = torch.full((bs, max_gts), self.num_classes, dtype=torch.long, device=device)
        boxes = torch.zeros((bs, max_gts, 4), device=device)
        if sum(len(lab) for lab in gt_labels) == 0:
            boxes[:] = torch.tensor(EMPTY_BATCH_BOX, device=device)
        for b, (lab, box) in enumerate(zip(gt_labels, gt_boxes)):
            labels[b, :len(lab)] = lab
            boxes[b, :len(lab)] = box
        return labels, boxes

    def _noise_labels(self, labels: Tensor, is_gt: Tensor) -> Tensor:
        """Replaces each real label by a uniformly random class with p = label_noise_ratio / 2."""
        if self.label_noise_ratio <= 0:
            return labels
        flip = torch.rand(labels.shape, device=labels.device) < self.label_noise_ratio * 0.5
        random_labels = torch.randint_like(labels, 0, self.num_classes)
        return torch.where(flip & is_gt, random_labels, labels)

    def _noise_boxes(self, boxes: Tensor, is_negative: Tensor) -> Tensor:
        """(bs, D, 4) cxcywh -> noised, clipped to the image, in inverse-sigmoid space.

        Every corner moves along each axis by ``u * box_noise_scale * (half the box side)`` with
        a random sign, u ~ U[0, 1) for positives and U[1, 2) for negatives.
        """
        if self.box_noise_scale > 0:
            # w * (0.5 * scale) rounds once, as (w * 0.5) * scale does (halving is exact for any
            # side above twice float32's smallest normal number): the same values in one op
            half_size = boxes[..., 2:].repeat(1, 1, 2) * (0.5 * self.box_noise_scale)
            sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
            magnitude = torch.rand_like(boxes) + is_negative[None, :, None]  # bool adds 0. / 1.
            corners = cxcywh_to_xyxy(boxes) + sign * magnitude * half_size
            boxes = xyxy_to_cxcywh(corners.clamp(0.0, 1.0))
            if self.absolute_sizes:
                boxes = boxes.abs()
        return clamped_inverse_sigmoid(boxes, eps=1e-5)

    @staticmethod
    def _positive_indices(is_gt: Tensor, num_positives: int, num_groups: int) -> tuple:
        """Positive query j of group g of image b reconstructs gt j of image b.

        Args:
            is_gt: (bs, M) True at the real gts; num_positives: their number (host int).

        Returns (P,) flat indices into (bs, D), ordered by image, group, gt; and the matching (P,)
        indices into the concatenated gts, P = num_groups * sum(G_b). A fixed number of ops for
        any batch size, with no host wait: the real (image, group, gt) cells of the (bs, groups,
        M) grid come first, in order, by a stable sort of the padding flags.
        """
        bs, max_gts = is_gt.shape
        padding = ~is_gt[:, None].expand(bs, num_groups, max_gts)
        cell = padding.reshape(-1).sort(stable=True).indices[:num_groups * num_positives]
        # cell (b, g, j) = (b * groups + g) * M + j; its query is (b * groups + g) * 2M + j
        pred_index = cell + cell // max_gts * max_gts
        rank = is_gt.reshape(-1).cumsum(0) - 1  # gt j of image b: its index among all gts
        gt_index = rank.view(bs, 1, max_gts).expand(bs, num_groups, max_gts).reshape(-1)[cell]
        return pred_index, gt_index


def clamped_inverse_sigmoid(x: Tensor, eps: float) -> Tensor:
    """``log(x / (1 - x))`` of ``x`` clamped to [0, 1], each factor floored at ``eps``: mmdet's
    ``inverse_sigmoid`` value for value, with the clamp folded into the two floors."""
    return torch.log(x.clamp(eps, 1) / (1 - x).clamp(eps, 1))
