#!/usr/bin/env python3
"""Set up the 7scenes dataset as scene folders; see `python datasets/setup_7scenes.py --help`."""
from transpose.data.setup.sevenscenes import main

if __name__ == "__main__":
    main()
