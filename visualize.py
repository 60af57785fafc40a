#!/usr/bin/env python3
"""Shim: see `python visualize.py --help` (the logic lives in transpose.cli)."""
from transpose.cli import visualize

if __name__ == "__main__":
    visualize()
