"""mbemlib: the library behind MBEM's commands (MBEM.py, aggregation.py, plan.py, ...).

The Python API is `mbemlib.api` (aggregate, mbem, plan); the estimators `mbemlib.aggregation`,
the settings and presets `mbemlib.settings`, the results files `mbemlib.store`, the reports
`mbemlib.report`. The checkout's top level holds the commands, noise_sim.py and the two trainers
(resnet.py, resnet_torch.py).
"""

import os

# The folder that holds the package: in a checkout its root (MBEM.py, data/, results/, .git).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
