"""Shared test set-up: quiet TensorFlow logs, and the TensorFlow backend unless a test picks another."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
