"""Test and analysis support (not model code)."""
from .host_sync import HostSyncRecorder, SyncSite
from .train_step import loader_batch, step_and_log

__all__ = ['HostSyncRecorder', 'SyncSite', 'loader_batch', 'step_and_log']
