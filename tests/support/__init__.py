"""Test helpers written once: the test modules import these instead of declaring their own."""
