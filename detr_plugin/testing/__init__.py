"""Test and analysis support (not model code)."""
from .host_sync import HostSyncRecorder, SyncSite

__all__ = ['HostSyncRecorder', 'SyncSite']
