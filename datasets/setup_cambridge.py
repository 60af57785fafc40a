#!/usr/bin/env python3
"""Set up the cambridge dataset as scene folders; see `python datasets/setup_cambridge.py --help`."""
from transpose.data.setup.cambridge import main

if __name__ == "__main__":
    main()
