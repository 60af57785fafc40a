#!/usr/bin/env python3
"""Set up the comballaz dataset as scene folders; see `python datasets/setup_comballaz.py --help`."""
from transpose.data.setup.crossloc import main_comballaz

if __name__ == "__main__":
    main_comballaz()
