"""Config schemas: every module class declares the keys it reads, with their types; anything else is an error.

A schema is a dict ``KEY -> Key``, written with ``req(...)`` (required) and ``opt(...)`` (optional)::

    CONFIG_SCHEMA = {"NAME": req(str), "NUM_FILTERS": req(list), "USE_NORM": opt(bool),
                     "LOSS_CONFIG": req(dict, keys={"LOSS_WEIGHTS": opt(dict)})}

``keys`` checks a nested mapping with its own schema (``None``: the mapping is free-form, e.g. a dict whose keys
are names the user chooses); ``items`` checks every mapping of a list with a schema, or, given a callable
``item -> (schema, owner)``, with the schema of the item's own class (augmentors, processors, KD heads by NAME).

``check(cfg, schema, path, owner)`` raises ``ConfigError`` naming the file that set the key (see ``origin_of``),
its dotted path, and a "did you mean" among the allowed keys. Keys of ``cfg`` that start with an underscore
(``_BASE_CONFIG_``) and the keys the tools add at run time (``RUNTIME_KEYS``) are not checked.

Types: ``int`` accepts ints (not bools), ``float`` ints and floats, ``list`` lists and tuples, ``dict`` mappings,
``str`` strings, ``bool`` bools, ``ANY`` anything; an optional key may also be null.
"""
import difflib

from .config import ConfigError

ANY = object

ORIGIN_ATTR = "_cfg_origin"   # (origins dict dotted path -> file, dotted path of this node), set by the loader


class Key:
    """One config key: accepted types, required or not, and a nested schema (``keys``) or list items' schema."""

    def __init__(self, *types, required=False, keys=None, items=None, choices=None, ignored=False):
        self.types = types or (ANY,)
        self.required = required
        self.keys = keys
        self.items = items
        self.choices = choices
        self.ignored = ignored


def req(*types, **kw):
    return Key(*types, required=True, **kw)


def opt(*types, **kw):
    return Key(*types, required=False, **kw)


def ignored(why):
    """A key of OpenPCDet's configs that this codebase accepts and does not use (``why`` says what replaces it);
    setting it warns, naming the file and the path, so configs written for OpenPCDet load unchanged."""
    key = Key(ANY, required=False, ignored=True)
    key.why = why
    return key


def _type_ok(value, types):
    for t in types:
        if t is ANY:
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is list and isinstance(value, (list, tuple)):
            return True
        if t is dict and isinstance(value, dict):
            return True
        if t in (str, bool) and isinstance(value, t):
            return True
    return False


def _type_names(types):
    return " or ".join("any" if t is ANY else t.__name__ for t in types)


def annotate_origins(cfg, origins, path=""):
    """Attach ``(origins, path)`` to ``cfg`` and every mapping below it (lists included), so a schema error on a
    sub-config can name the file and the full dotted path. ``origins``: dotted path -> file that set it."""
    if isinstance(cfg, dict):
        try:
            object.__setattr__(cfg, ORIGIN_ATTR, (origins, path))
        except AttributeError:      # a plain dict takes no attributes: its errors name the path only
            pass
        for key, val in cfg.items():
            annotate_origins(val, origins, f"{path}.{key}" if path else str(key))
    elif isinstance(cfg, (list, tuple)):
        for i, val in enumerate(cfg):
            annotate_origins(val, origins, f"{path}[{i}]")


def origin_of(cfg, default_path):
    """(origins, dotted path) of ``cfg`` as annotated by the loader, else ({}, ``default_path``)."""
    origins, path = getattr(cfg, ORIGIN_ATTR, None) or ({}, default_path)
    return origins, path


def _file_of(origins, dotted):
    """The file that set ``dotted`` or its nearest ancestor."""
    probe = dotted
    while probe:
        if probe in origins:
            return origins[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return origins.get("", None)


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


def _error(origins, dotted, msg):
    where = _file_of(origins, dotted)
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}{dotted}: {msg}")


RUNTIME_KEYS = {"CFG_FILE", "EXP_GROUP_PATH", "TAG", "LOCAL_RANK"}


def check(cfg, schema, path, owner, origins=None):
    """Validate the mapping ``cfg`` at dotted ``path`` against ``schema`` (module ``owner`` names it in errors).

    Raises ConfigError on an unknown key (with a "did you mean"), a missing required key, or a wrong type.
    """
    if origins is None:
        origins, path = origin_of(cfg, path)
    if not isinstance(cfg, dict):
        raise _error(origins, path, f"{owner} expects a mapping, got {type(cfg).__name__} {cfg!r}")
    for key in cfg:
        if str(key).startswith("_") or key in schema:
            continue
        allowed = sorted(schema)
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _error(origins, _join(path, key),
                     f"unknown key '{key}' for {owner}{hint} (allowed: {', '.join(allowed)})")
    for key, spec in schema.items():
        dotted = _join(path, key)
        if key not in cfg:
            if spec.required:
                raise _error(origins, dotted, f"missing required key '{key}' of {owner}")
            continue
        value = cfg[key]
        if spec.ignored:
            import warnings

            where = _file_of(origins, dotted)
            warnings.warn(f"{where + ': ' if where else ''}{dotted}: accepted for OpenPCDet compatibility and not "
                          f"used here ({spec.why})", UserWarning, stacklevel=2)
            continue
        if value is None and not spec.required:
            continue
        if not _type_ok(value, spec.types):
            raise _error(origins, dotted, f"{owner} expects {_type_names(spec.types)}, got "
                                          f"{type(value).__name__} {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise _error(origins, dotted, f"{owner} expects one of {list(spec.choices)}, got {value!r}")
        if spec.keys is not None and isinstance(value, dict):
            check(value, spec.keys, dotted, owner, origins)
        if spec.items is not None and isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                item_path = f"{dotted}[{i}]"
                if callable(spec.items):      # it sees the enclosing mapping (DATA_AUGMENTOR's DISABLE_AUG_LIST)
                    found = spec.items(item, item_path, origins, parent=cfg)
                    if found is None:         # an item the builder skips: not checked
                        continue
                    item_schema, item_owner = found
                else:
                    item_schema, item_owner = spec.items, owner
                check(item, item_schema, item_path, item_owner, origins)


def by_name(registry, what, extra=None, skip_key=None):
    """An ``items`` callable for lists of ``{NAME: ..., ...}`` blocks: the schema is ``registry[NAME]``
    (a dict NAME -> schema) plus ``extra`` keys; an unknown NAME is an error listing the known ones. Items whose
    NAME is listed under ``skip_key`` of the enclosing mapping (``DISABLE_AUG_LIST``) are not built, so not checked
    (an OpenPCDet config may list and disable an augmentation this codebase lacks)."""

    def items(item, path, origins, parent=None):
        name = item.get("NAME") if isinstance(item, dict) else None
        if skip_key and parent is not None and name in (parent.get(skip_key) or []):
            return None
        table = registry() if callable(registry) else registry
        if name not in table:
            close = difflib.get_close_matches(str(name), sorted(table), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise _error(origins, _join(path, "NAME"), f"unknown {what} '{name}'{hint} (known: {', '.join(sorted(table))})")
        return dict(table[name], NAME=req(str), **(extra or {})), f"{what} {name}"

    return items


def by_registry(registry, what):
    """An ``items`` callable for lists of ``{NAME: ..., ...}`` blocks whose NAME is a class of ``registry``
    (a ``pcdet.registry.Registry``): each block is checked by that class's ``CONFIG_SCHEMA``."""

    def items(item, path, origins, parent=None):
        name = item.get("NAME") if isinstance(item, dict) else None
        if name is None:
            raise _error(origins, path, f"a {what} block needs a NAME (has {sorted(item) if item else []})")
        try:
            cls = registry.get(name)
        except KeyError as exc:
            raise _error(origins, _join(path, "NAME"), str(exc).strip("'\"")) from None
        return dict(class_schema(cls), NAME=req(str)), f"{what} {name}"

    return items


def class_schema(cls):
    """The ``CONFIG_SCHEMA`` of ``cls`` merged over its bases' (a subclass adds or overrides keys); a class with no
    schema anywhere in its MRO raises, so every buildable module must declare one."""
    schema, found = {}, False
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("CONFIG_SCHEMA")
        if own is not None:
            schema.update(own)
            found = True
    if not found:
        raise TypeError(f"{cls.__module__}.{cls.__name__} declares no CONFIG_SCHEMA")
    return schema


def check_module(cfg, cls, path):
    """Validate the config block of a module of class ``cls`` at ``path`` (NAME is always allowed)."""
    check(cfg, dict(class_schema(cls), NAME=req(str)), path, cls.__name__)


def lookup(registry, cfg, path, what):
    """``registry.get(cfg['NAME'])``; a missing or unknown NAME is a ConfigError naming the file and path."""
    origins, path = origin_of(cfg, path)
    name = cfg.get("NAME") if isinstance(cfg, dict) else None
    if name is None:
        raise _error(origins, path, f"a {what} block needs a NAME (has {sorted(cfg) if isinstance(cfg, dict) else cfg})")
    try:
        return registry.get(name)
    except KeyError as exc:
        raise _error(origins, _join(path, "NAME"), str(exc).strip("'\"")) from None


TOP_LEVEL_SCHEMA = {"CLASS_NAMES": req(list), "DATA_CONFIG": req(dict, keys=None), "MODEL": opt(dict, keys=None),
                    "OPTIMIZATION": opt(dict, keys=None), "KD": opt(dict, keys=None)}


def validate_config(cfg, optimization_schema=None):
    """Check a whole experiment config before anything is built: the top level, DATA_CONFIG by its dataset class,
    MODEL by the detector and each module class, KD by the distiller and each head class, and OPTIMIZATION by
    ``optimization_schema`` when given (it lives with the optimizer builder in tools/train_utils). A config that
    is only a dataset config (``DATASET`` at the top) is checked as DATA_CONFIG. Raises ConfigError."""
    from .datasets import DATASETS
    from .models.detectors.detector3d_template import MODULE_TOPOLOGY, Detector3DTemplate, _registry

    if "DATASET" in cfg and "DATA_CONFIG" not in cfg:
        cls = lookup(DATASETS, {"NAME": cfg["DATASET"]}, "DATASET", "dataset")
        check(cfg, class_schema(cls), "DATA_CONFIG", "dataset config")
        return
    top = dict(TOP_LEVEL_SCHEMA, **{k: opt(ANY) for k in RUNTIME_KEYS})
    if "MODEL" not in cfg:      # a bare data config with CLASS_NAMES (dataset_configs/*) needs no model
        top["CLASS_NAMES"] = opt(list)
    check(cfg, top, "", "the experiment config")
    data_cfg = cfg["DATA_CONFIG"]
    name = data_cfg.get("DATASET")
    if name is None:
        raise _error(*origin_of(data_cfg, "DATA_CONFIG"), "missing required key 'DATASET'")
    cls = lookup(DATASETS, {"NAME": name}, "DATA_CONFIG.DATASET", "dataset")
    check(data_cfg, class_schema(cls), "DATA_CONFIG", f"dataset {name}")
    model_cfg = cfg.get("MODEL")
    if model_cfg is not None:
        check(model_cfg, Detector3DTemplate.MODEL_SCHEMA, "MODEL", f"detector {model_cfg.get('NAME')}")
        for _, key, path, attr in MODULE_TOPOLOGY:
            if model_cfg.get(key) is not None:
                check_module(model_cfg[key], lookup(_registry(path, attr, key), model_cfg[key], f"MODEL.{key}", key),
                             f"MODEL.{key}")
    if cfg.get("KD") is not None:
        from .kd.distiller import Distiller

        check(cfg["KD"], Distiller.CONFIG_SCHEMA, "KD", "Distiller")
    if optimization_schema is not None and cfg.get("OPTIMIZATION") is not None:
        check(cfg["OPTIMIZATION"], optimization_schema, "OPTIMIZATION", "the optimizer")
