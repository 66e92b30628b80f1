"""tools/test.py: argument parsing and how the options change the config."""
import pytest

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


def test_checkpoint_goes_to_load_from(tool, config):
    cfg = tool.setup_cfg(tool.parse_args([config, 'w/epoch_1.pth']))
    assert cfg.load_from == 'w/epoch_1.pth'
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
