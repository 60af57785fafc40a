#!/usr/bin/env python3
"""Shim: see `python train_e2e.py --help` (the logic lives in transpose.cli)."""
from transpose.cli import train_e2e

if __name__ == "__main__":
    train_e2e()
