#!/usr/bin/env python3
"""Shim: see `python train_apr.py --help` (the flags of `transpose apr train`; logic in transpose.cli)."""
from transpose.cli import train_apr

if __name__ == "__main__":
    train_apr()
