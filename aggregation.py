"""Aggregate crowdsourced labels: a CSV of item, worker, label in, each item's posterior over its
true class and each worker's confusion matrix out.  `python aggregation.py --help`

    python aggregation.py answers.csv --method em --out posterior.csv --confusions-out workers.csv

The estimators are mbemlib/aggregation.py's, the file formats and this command line
mbemlib/label_files.py's; installed (`pip install .`), the same command is `mbem-aggregate`.
"""

import sys

from mbemlib.label_files import main

if __name__ == "__main__":
    sys.exit(main())
