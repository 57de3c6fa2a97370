import sys

from onnxforge.driver.cli import main

sys.exit(main())
