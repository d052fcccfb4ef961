"""Runs at the start of every Python process that ``loadertop run -- COMMAND`` starts (it is on their PYTHONPATH).

It imports nothing heavy: it only arranges for torch's DataLoader to be instrumented once the
script imports torch, then hands over to any ``sitecustomize`` the environment had before. It also
appends the launcher's fallback directory (loadertop's psutil) to the end of ``sys.path``, after the
site-packages of the script's environment, which wins where it has its own.
"""

import os
import sys


def _chain_previous_sitecustomize() -> None:
    """Run the sitecustomize this one shadows, if the environment has one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_fallback = os.environ.get("LOADERTOP_FALLBACK_PATH")
if _fallback and _fallback not in sys.path:
    sys.path.append(_fallback)  # site-packages are on sys.path already: sitecustomize runs after them
if os.environ.get("LOADERTOP_PROBE"):
    try:
        from loadertop.core.probe.launched import install_from_environment

        install_from_environment()
    except Exception as exc:  # noqa: BLE001 - never break the user's script: it runs unwatched instead
        print(
            f"loadertop: cannot instrument this process ({type(exc).__name__}: {exc}); it runs unwatched",
            file=sys.stderr,
        )
_chain_previous_sitecustomize()
