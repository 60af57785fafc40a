#!/usr/bin/env python3
"""Shim: see `python test.py --help` (the logic lives in transpose.cli)."""
from transpose.cli import test

if __name__ == "__main__":
    test()
