"""Start the worker: `python -I -S <this directory> [options]` (options: see `serve.py`)."""

import importlib
import os
import sys

# Run as a directory, Python runs this file as __main__ with the directory first on
# sys.path. The worker's modules are one package that imports itself relatively: import it
# from its parent instead, searched last so nothing beside the package there (the process
# runtime's own select.py, say) can shadow a standard module.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.append(os.path.dirname(_here))
importlib.import_module(f"{os.path.basename(_here)}.serve").main()
