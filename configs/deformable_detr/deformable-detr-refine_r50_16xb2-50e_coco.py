# + iterative bounding-box refinement: per-layer heads, each layer refines the previous boxes
_base_ = './deformable-detr_r50_16xb2-50e_coco.py'

model = dict(with_box_refine=True)
