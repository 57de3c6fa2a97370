"""``python -m onnxforge.families.maxtext.survey``: the survey's command line (``driver``)."""

import sys

from onnxforge.families.maxtext.survey.driver import main

sys.exit(main())
