"""Supernet search spaces as plain torch code (installed as ``mednns.search_spaces``).

Plugins in ``mednns.plugins`` register these through the search-space hook.
"""

if __name__ == "search_spaces":  # imported from a checkout's root instead of as mednns.search_spaces
    raise ImportError("'search_spaces' is not a top-level package: "
                      "import 'mednns.search_spaces' (installed by 'pip install .')")
