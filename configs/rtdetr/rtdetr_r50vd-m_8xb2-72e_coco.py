# RT-DETR R50-vd-m (rtdetr_r50vd_m_6x_coco.yml): the R50 model with CCFM at half width, evaluated
# with its first 3 of 6 decoder layers (trained with all 6): the paper's speed-tuned variant.
# Expected: 51.3 AP on val2017 (paper, Table 2).
_base_ = './rtdetr_r50vd_8xb2-72e_coco.py'

model = dict(neck=dict(expansion=0.5), bbox_head=dict(eval_idx=2))
