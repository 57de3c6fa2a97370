"""``python -m onnxforge.survey``: the survey's command line (``driver``)."""

import sys

from onnxforge.survey.driver import main

sys.exit(main())
