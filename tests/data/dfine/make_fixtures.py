"""Writes ``original_models.json`` from the ORIGINAL code (Peterande/D-FINE and
ShihuaHuang95/DEIM, imported at run time through tools/model_converters/dfine_parity_reference.py)
in the original's environment, from the repository root:

    /work/ref_env/bin/python tests/data/dfine/make_fixtures.py /work/ref/D-FINE /work/ref/DEIM

Each model is built from its COCO YAML (80 classes, no pretrained download), one process per
model (the original's YAMLConfig keeps merged includes between loads). The file holds:

* ``dfine_s_state_dict``: D-FINE S's state-dict names and shapes, in its order;
* ``trainable``: the names of the parameters that train (``requires_grad``) in D-FINE S, N, L and
  DEIM-D-FINE L (DEIM S and N train the same names as D-FINE S and N);
* ``num_params``: every model's parameter count.
"""
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MODELS = [('dfine', s) for s in 'nsmlx'] + [('deim', s) for s in 'nsmlx']
TRAINABLE = ['dfine_s', 'dfine_n', 'dfine_l', 'deim_l']

BUILD = """
import json, sys
sys.path.insert(0, {tools!r})
from dfine_parity_reference import import_full_model, import_original
root, deim, yml = {root!r}, {deim!r}, {yml!r}
classes = import_original(root, deim)
Detector, HGNetv2, Encoder = import_full_model(root, deim)
cfg = classes[-1](yml).yaml_cfg
backbone = dict(cfg['HGNetv2'], pretrained=False)
backbone.pop('local_model_dir', None)
model = Detector(HGNetv2(**backbone), Encoder(**cfg['HybridEncoder']),
                 classes[0](num_classes=80, eval_spatial_size=cfg['eval_spatial_size'],
                            **cfg['DFINETransformer']))
print(json.dumps(dict(
    state_dict=[[k, list(v.shape)] for k, v in model.state_dict().items()],
    trainable=[n for n, p in model.named_parameters() if p.requires_grad],
    num_params=sum(p.numel() for p in model.parameters()))))
"""


def build(family: str, size: str, dfine_root: str, deim_root: str) -> dict:
    deim = family == 'deim'
    root = deim_root if deim else dfine_root
    yml = (f'{root}/configs/deim_dfine/deim_hgnetv2_{size}_coco.yml' if deim else
           f'{root}/configs/dfine/dfine_hgnetv2_{size}_coco.yml')
    code = BUILD.format(tools=str(ROOT / 'tools/model_converters'), root=root, deim=deim, yml=yml)
    out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    dfine_root, deim_root = sys.argv[1:3]
    models = {f'{f}_{s}': build(f, s, dfine_root, deim_root) for f, s in MODELS}
    fixture = dict(
        dfine_s_state_dict=models['dfine_s']['state_dict'],
        trainable={name: models[name]['trainable'] for name in TRAINABLE},
        num_params={name: m['num_params'] for name, m in models.items()})
    (HERE / 'original_models.json').write_text(json.dumps(fixture, separators=(',', ':')))


if __name__ == '__main__':
    main()
