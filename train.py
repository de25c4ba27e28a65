"""Trains a model from a config (arrives with the training issue)."""
import sys

if __name__ == "__main__":
  sys.exit("train.py: not yet implemented; the training system lands with the training issue.")
