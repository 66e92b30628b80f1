"""tools/train.py: argument parsing and how the options change the config."""
import pathlib

import pytest
from mmengine.registry import RUNNERS

CONFIG = '''
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01))
auto_scale_lr = dict(enable=False, base_batch_size=16)
train_cfg = dict(max_epochs=12)
model = dict(type='Anything', depth=18, sizes=[1, 2])
'''


@pytest.fixture(scope='module')
def train(load_tool):
    return load_tool('tools/train.py')


@pytest.fixture
def config(tmp_path):
    path = tmp_path / 'my_model_8xb2-1e_demo.py'
    path.write_text(CONFIG)
    return str(path)


def test_defaults(train):
    args = train.parse_args(['a.py'])
    assert (args.config, args.work_dir, args.amp, args.resume, args.auto_scale_lr,
            args.cfg_options, args.launcher, args.local_rank) == (
                'a.py', None, False, None, False, None, 'none', 0)


@pytest.mark.parametrize('argv, expected', [
    (['a.py', '--resume'], 'auto'),
    (['a.py', '--resume', 'ckpt/epoch_3.pth'], 'ckpt/epoch_3.pth'),
    (['a.py', '--resume', '--amp'], 'auto'),
])
def test_resume_with_and_without_path(train, argv, expected):
    assert train.parse_args(argv).resume == expected


@pytest.mark.parametrize('flag', [['--local-rank', '3'], ['--local_rank=3']])
def test_both_local_rank_spellings(train, flag):
    assert train.parse_args(['a.py'] + flag).local_rank == 3


def test_rejects_unknown_launcher(train):
    with pytest.raises(SystemExit):
        train.parse_args(['a.py', '--launcher', 'kubernetes'])


def test_cfg_options_merge_into_nested_keys(train, config):
    cfg = train.setup_cfg(train.parse_args(
        [config, '--cfg-options', 'train_cfg.max_epochs=2', 'optim_wrapper.optimizer.lr=0.1',
         'model.sizes=[3,4]', 'new_key=abc']))
    assert cfg.train_cfg.max_epochs == 2
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.1)
    assert cfg.model == dict(type='Anything', depth=18, sizes=[3, 4])
    assert cfg.new_key == 'abc'
    assert cfg.launcher == 'none' and cfg.get('resume', False) is False


def test_work_dir_priority(train, config):
    assert train.setup_cfg(train.parse_args([config])).work_dir == './work_dirs/my_model_8xb2-1e_demo'
    from_config = train.setup_cfg(train.parse_args([config, '--cfg-options', 'work_dir=wd_cfg']))
    assert from_config.work_dir == 'wd_cfg'
    both = train.setup_cfg(train.parse_args(
        [config, '--work-dir', 'wd_cli', '--cfg-options', 'work_dir=wd_cfg']))
    assert both.work_dir == 'wd_cli'


def test_amp_switches_the_optimizer_wrapper(train, config, monkeypatch):
    monkeypatch.setattr(train, 'get_device', lambda: 'cuda')
    cfg = train.setup_cfg(train.parse_args([config, '--amp']))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.01)
    assert cfg.optim_wrapper.dtype == ('bfloat16' if train.bf16_supported() else 'float16')
    kept = train.setup_cfg(train.parse_args(
        [config, '--amp', '--cfg-options', 'optim_wrapper.dtype=float16']))
    assert kept.optim_wrapper.dtype == 'float16'
    with pytest.raises(ValueError, match='optim_wrapper.type'):
        train.setup_cfg(train.parse_args(
            [config, '--amp', '--cfg-options', 'optim_wrapper.type=SomeOtherWrapper']))


def test_amp_without_a_gpu_is_a_usage_error(train, config, monkeypatch):
    monkeypatch.setattr(train, 'get_device', lambda: 'cpu')
    with pytest.raises(train.UsageError, match='--amp needs a GPU') as error:
        train.setup_cfg(train.parse_args([config, '--amp']))
    assert '\n' not in str(error.value)


def test_auto_scale_lr(train, config, tmp_path):
    assert train.setup_cfg(train.parse_args([config, '--auto-scale-lr'])).auto_scale_lr == dict(
        enable=True, base_batch_size=16)
    without = tmp_path / 'no_auto_scale.py'
    without.write_text("optim_wrapper = dict(type='OptimWrapper')\n")
    with pytest.raises(ValueError, match='base_batch_size'):
        train.setup_cfg(train.parse_args([str(without), '--auto-scale-lr']))


def test_resume_sets_resume_and_load_from(train, config, tmp_path):
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'epoch_2.pth').write_bytes(b'')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_2.pth'))
    auto = train.setup_cfg(train.parse_args([config, '--resume', '--work-dir', str(work_dir)]))
    assert (auto.resume, auto.load_from) == (True, None)
    given = train.setup_cfg(train.parse_args([config, '--resume', str(work_dir / 'epoch_2.pth')]))
    assert (given.resume, given.load_from) == (True, str(work_dir / 'epoch_2.pth'))
    with pytest.raises(train.UsageError, match=r"--resume: checkpoint 'x/epoch_9.pth' does not"):
        train.setup_cfg(train.parse_args([config, '--resume', 'x/epoch_9.pth']))


def test_resume_with_nothing_to_resume_starts_over_and_says_so(train, tmp_path, repo_root):
    """... from the config's load_from, if any, which fine-tunes: CheckpointCheckHook(partial)."""
    from detr_plugin.engine.hooks.checkpoint_check_hook import CheckpointCheckHook
    config = str(repo_root / 'configs/detr/detr_r18_1xb8-demo.py')
    work_dir = tmp_path / 'empty_work_dir'
    args = train.parse_args([config, '--resume', '--work-dir', str(work_dir)])
    assert train.setup_cfg(args).get('resume', False) is False
    runner = train.runner_from_args(args)
    log = pathlib.Path(runner.log_dir, f'{runner.timestamp}.log').read_text()
    assert (f'--resume: no checkpoint to resume from in {work_dir} (it has no last_checkpoint '
            'file): training from scratch') in log
    assert not any(isinstance(hook, CheckpointCheckHook) for hook in runner.hooks)

    # another work dir and experiment name: runners made within one second share the log
    # folder (named after the timestamp) and mmengine's logger (named after config and
    # timestamp), so the second would log into the first one's file
    fine_tune = train.runner_from_args(train.parse_args(
        [config, '--resume', '--work-dir', str(tmp_path / 'other_empty_work_dir'),
         '--cfg-options', 'load_from=coco.pth', 'experiment_name=fine_tune']))
    log = pathlib.Path(fine_tune.log_dir, f'{fine_tune.timestamp}.log').read_text()
    assert "training from scratch" not in log and "starting from load_from 'coco.pth'" in log
    [check] = [hook for hook in fine_tune.hooks if isinstance(hook, CheckpointCheckHook)]
    assert check.partial


def test_launcher_reaches_the_config(train, config):
    assert train.setup_cfg(train.parse_args([config, '--launcher', 'slurm'])).launcher == 'slurm'


class _RecordingRunner:
    built_from = None

    @classmethod
    def from_cfg(cls, cfg):
        cls.built_from = cfg
        return cls()


def test_runner_type_picks_a_registered_runner(train, config):
    RUNNERS.register_module(name='_RecordingRunnerForTrainTest', module=_RecordingRunner, force=True)
    cfg = train.setup_cfg(train.parse_args(
        [config, '--cfg-options', 'runner_type=_RecordingRunnerForTrainTest']))
    runner = train.build_runner(cfg)
    assert isinstance(runner, _RecordingRunner)
    assert _RecordingRunner.built_from.work_dir == './work_dirs/my_model_8xb2-1e_demo'
    assert _RecordingRunner.built_from.model == dict(type='Anything', depth=18, sizes=[1, 2])
