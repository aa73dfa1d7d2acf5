"""Built-in mednns plugins (installed as ``mednns.plugins``).

Each module is one plugin, declared under the ``mednns`` entry-point group in
``setup.cfg`` exactly as a third-party plugin would be, and uses only mednns's
public API.
"""

if __name__ == "plugins":  # imported from a checkout's root instead of as mednns.plugins
    raise ImportError("'plugins' is not a top-level package: import 'mednns.plugins' (installed by 'pip install .')")
