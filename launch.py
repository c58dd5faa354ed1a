"""jaxlab's command line from a checkout: `python launch.py [COMMAND] [flags]`, the same as `jaxlab` (jaxlab/cli.py).

The checkout's folder is on sys.path, so a model or task of one's own named 'package.module:Name' in a config
is found here, and child runs (sweep, search) start through this file again.
"""

import os
import sys

from jaxlab import cli

if __name__ == '__main__':
  cli.main(root=os.path.dirname(os.path.abspath(__file__)), launcher=(sys.executable, os.path.abspath(__file__)))
