"""The compiled extensions of pcdet: (module name, C++ sources, CUDA sources). Read by setup.py."""


def extension_specs():
    return []
