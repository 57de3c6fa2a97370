import sys

from onnxforge.cli import main

sys.exit(main())
