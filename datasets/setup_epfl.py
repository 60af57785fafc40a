#!/usr/bin/env python3
"""Set up the epfl dataset as scene folders; see `python datasets/setup_epfl.py --help`."""
from transpose.data.setup.crossloc import main_epfl

if __name__ == "__main__":
    main_epfl()
