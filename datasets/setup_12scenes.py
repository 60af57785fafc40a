#!/usr/bin/env python3
"""Set up the 12scenes dataset as scene folders; see `python datasets/setup_12scenes.py --help`."""
from transpose.data.setup.twelvescenes import main

if __name__ == "__main__":
    main()
