"""One small registry per module family: ``@REG.register`` then ``REG.get(cfg.NAME)``."""
import difflib


class Registry:
    """Maps a config ``NAME`` to a class, with a "did you mean" error for unknown names."""

    def __init__(self, family):
        self.family = family
        self._items = {}

    def register(self, obj=None, name=None):
        def _do(o):
            key = name or o.__name__
            if key in self._items and self._items[key] is not o:
                raise KeyError(f"{self.family}: '{key}' is registered twice")
            self._items[key] = o
            return o

        return _do(obj) if obj is not None else _do

    def get(self, name):
        if name not in self._items:
            close = difflib.get_close_matches(str(name), list(self._items), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise KeyError(
                f"{self.family}: unknown NAME '{name}'{hint} (known: {sorted(self._items)})"
            )
        return self._items[name]

    def __contains__(self, name):
        return name in self._items

    def names(self):
        return sorted(self._items)


def import_submodules(package_name):
    """Import every public ``.py`` module of a package so that their ``@register`` decorators run."""
    import importlib
    import pkgutil

    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and not info.ispkg:
            importlib.import_module(f"{package_name}.{info.name}")
