#!/usr/bin/env python3
"""Render the built-in procedural scenes as scene folders; see `python datasets/setup_synthetic.py --help`."""
from transpose.data.synthetic import main

if __name__ == "__main__":
    main()
