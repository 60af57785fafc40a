#!/usr/bin/env python3
"""Shim: see `python train_init.py --help` (the logic lives in transpose.cli)."""
from transpose.cli import train_init

if __name__ == "__main__":
    train_init()
