"""tools/analysis/profile_pipeline.py: one row per transform of the config's training pipeline, in
order, positive times that add up to the pipeline's own time; the Mosaic (wrapper) path runs."""
import re

import pytest
from mmengine.config import Config

RTDETR = 'configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py'
DEIM = 'configs/_base_/datasets/coco_detection_dense_o2o.py'
NUM_IMAGES = 12


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/analysis/profile_pipeline.py')


@pytest.fixture(scope='module')
def data_root(load_tool, tmp_path_factory):
    root = tmp_path_factory.mktemp('coco_like')
    load_tool('tools/misc/make_coco_like_dataset.py').main(
        ['--out', str(root), '--num-images', str(NUM_IMAGES), '--max-side', '160'])
    return str(root)


def table_rows(text):
    """(name, median, mean, share %) of each transform row of the printed table."""
    rows = re.findall(r'^\| ([^*|][^|]*) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \|$', text, re.M)
    return [(name, float(median), float(mean), float(share)) for name, median, mean, share in rows]


def test_rows_are_the_pipelines_transforms(tool, data_root, repo_root, capsys):
    text = tool.main([str(repo_root / RTDETR), '--data-root', data_root,
                      '--images', str(NUM_IMAGES)])
    assert capsys.readouterr().out.strip().endswith(text.strip())
    rows = table_rows(text)
    pipeline = Config.fromfile(str(repo_root / RTDETR)).train_dataloader.dataset.pipeline
    assert [name.split(' #')[0] for name, *_ in rows] == [t['type'] for t in pipeline]
    assert all(median > 0 and mean > 0 for _, median, mean, _ in rows)
    assert sum(share for *_, share in rows) == pytest.approx(100, abs=0.1 * len(rows))
    assert re.search(r'^[\d.]+ images/s in one process$', text, re.M)


def test_cfg_options_swap_a_transform(tool, data_root, repo_root):
    text = tool.main([str(repo_root / RTDETR), '--data-root', data_root, '--images', '4',
                      '--cfg-options', 'train_dataloader.dataset.pipeline.3.type=Expand'])
    assert [name for name, *_ in table_rows(text)][3] == 'Expand'


def test_times_add_up_to_the_whole_pipeline(tool, data_root, repo_root):
    args = tool.parse_args([str(repo_root / RTDETR), '--data-root', data_root])
    dataset, cfg = tool.build_dataset(args)
    tool.worker_threads(cfg, None)
    images = 3 * NUM_IMAGES
    tool.profile(dataset, images, seed=0)  # warm the file cache and lazy imports
    summed = min(tool.profile(dataset, images, seed=0)[1] for _ in range(2))
    whole = min(tool.whole_pipeline_seconds(dataset, images, seed=0) for _ in range(2))
    assert 0.6 * whole < summed < 1.6 * whole  # a loose bound: other agents share the CPU


def test_mosaic_wrapper(tool, data_root, repo_root):
    text = tool.main([str(repo_root / DEIM), '--data-root', data_root, '--images', '6'])
    names = [name for name, *_ in table_rows(text)]
    assert names[:2] == ['LoadImageFromFile', 'LoadAnnotations']
    assert {'Mosaic images', 'copy', 'Mosaic', 'PhotoMetricDistortion',
            'PackDetInputs'} <= set(names)
