"""tools/analysis/host_waits.py on the RT-DETR demo config: the three named waits, nothing else."""
import sys


def test_prints_every_site_of_a_warm_step(load_tool, repo_root, monkeypatch, capsys):
    tool = load_tool('tools/analysis/host_waits.py')
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(sys, 'argv', ['host_waits.py', 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
                                      '--size', '32', '--depth', '1',
                                      '--cfg-options', 'model.decoder.num_layers=2',
                                      'model.decoder.num_queries=8'])
    tool.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == '3 host waits'
    sites = sorted((line.split()[1], line.split()[-2].rsplit(':', 1)[0]) for line in lines[1:])
    assert sites == [('copy', 'detr_plugin/models/detectors/rtdetr.py'),
                     ('copy', 'detr_plugin/models/task_modules/hungarian_assigner.py'),
                     ('item', 'mmengine/optim/optimizer/optimizer_wrapper.py')]
