import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Registers mmdet's and detr_plugin's modules; optionally makes ``detr_plugin`` the default scope.

    Like ``mmdet.utils.register_all_modules``: call it in scripts that build components from
    configs without going through a config file's ``custom_imports``.
    """
    from mmdet.utils import register_all_modules as register_mmdet_modules
    register_mmdet_modules(init_default_scope=False)
    import detr_plugin.datasets  # noqa: F401
    import detr_plugin.engine  # noqa: F401
    import detr_plugin.models  # noqa: F401
    if not init_default_scope:
        return
    current = DefaultScope.get_current_instance()
    if current is None or current.scope_name != 'detr_plugin':
        if current is not None:
            warnings.warn(f'The current default scope "{current.scope_name}" is not "detr_plugin"; '
                          'register_all_modules makes a new one named "detr_plugin".')
        DefaultScope.get_instance(f'detr_plugin-{datetime.datetime.now()}', scope_name='detr_plugin')
