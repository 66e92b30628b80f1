"""tools/test.py: argument parsing, how the options change the config, and the refusal of a
checkpoint that does not fit the model."""
import pytest
import torch

CONFIG = '''
default_hooks = dict(visualization=dict(type='DetVisualizationHook'))
model = dict(type='Anything')
'''


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/test.py')


@pytest.fixture
def config(tmp_path):
    path = tmp_path / 'my_model_demo.py'
    path.write_text(CONFIG)
    return str(path)


def test_checkpoint_is_optional(tool):
    assert tool.parse_args(['a.py']).checkpoint is None
    args = tool.parse_args(['a.py', 'w/epoch_1.pth', '--launcher', 'pytorch', '--local-rank', '1'])
    assert (args.checkpoint, args.launcher, args.local_rank) == ('w/epoch_1.pth', 'pytorch', 1)


@pytest.mark.parametrize('out, ok', [('r.pkl', True), ('r.pickle', True), ('r.json', False)])
def test_out_must_be_a_pickle(tool, out, ok):
    if ok:
        assert tool.parse_args(['a.py', '--out', out]).out == out
    else:
        with pytest.raises(SystemExit):
            tool.parse_args(['a.py', '--out', out])


def test_checkpoint_is_loaded_by_the_tool_not_the_runner(tool, config):
    args = tool.parse_args([config, 'w/epoch_1.pth'])
    assert (args.checkpoint, args.partial, args.trust_checkpoint) == ('w/epoch_1.pth', False, False)
    cfg = tool.setup_cfg(args)
    assert cfg.load_from is None, 'mmengine would load it without the checkpoint check'
    assert cfg.get('randomness') is None, 'a trained model needs no seed'
    assert cfg.work_dir == './work_dirs/my_model_demo'


def test_without_checkpoint_the_untrained_model_is_seeded(tool, config):
    cfg = tool.setup_cfg(tool.parse_args([config]))
    assert cfg.load_from is None and cfg.randomness == dict(seed=0)
    own_seed = tool.setup_cfg(tool.parse_args(
        [config, '--cfg-options', 'randomness.seed=7', 'randomness.deterministic=True']))
    assert own_seed.randomness == dict(seed=7, deterministic=True)


def test_cfg_options_and_work_dir(tool, config):
    cfg = tool.setup_cfg(tool.parse_args(
        [config, 'c.pth', '--work-dir', 'wd', '--cfg-options', 'model.depth=50']))
    assert cfg.work_dir == 'wd' and cfg.model == dict(type='Anything', depth=50)


def test_show_dir_turns_on_drawing(tool, config, tmp_path):
    cfg = tool.setup_cfg(tool.parse_args([config, 'c.pth', '--show-dir', 'vis']))
    assert cfg.default_hooks.visualization == dict(type='DetVisualizationHook', draw=True,
                                                   test_out_dir='vis')
    shown = tool.setup_cfg(tool.parse_args([config, 'c.pth', '--show', '--wait-time', '1']))
    assert shown.default_hooks.visualization == dict(type='DetVisualizationHook', draw=True,
                                                     show=True, wait_time=1.0)
    no_hook = tmp_path / 'no_hook.py'
    no_hook.write_text("model = dict(type='Anything')\n")
    with pytest.raises(ValueError, match='default_hooks.visualization'):
        tool.setup_cfg(tool.parse_args([str(no_hook), 'c.pth', '--show-dir', 'vis']))


def test_checkpoint_of_another_class_count_is_refused_in_one_line(tool, repo_root, tmp_path,
                                                                 monkeypatch):
    """(the script prints a CheckpointError as one line 'error: ...', exit status 1)"""
    from mmengine.config import Config

    from detr_plugin.registry import MODELS
    from detr_plugin.utils import CheckpointError
    monkeypatch.setenv('LOCAL_RANK', '0')  # main() sets it with setdefault
    demo = repo_root / 'configs/detr/detr_r18_1xb8-demo.py'
    other = Config.fromfile(str(demo)).model
    other.bbox_head.num_classes = 5
    checkpoint = tmp_path / 'five_classes.pth'
    torch.save({'state_dict': MODELS.build(other).state_dict()}, checkpoint)
    with pytest.raises(CheckpointError) as error:
        tool.main([str(demo), str(checkpoint), '--work-dir', str(tmp_path / 'eval')])
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith(f"checkpoint '{checkpoint}' does not fit the model (DETR): ")
    assert 'keys of another shape [bbox_head.' in message and 'vs (4' in message  # 3 classes + 1
